// Top-up and payment confirmation with Stripe.js: the card number goes to Stripe, never here.
(function () {
  "use strict";
  const csrf = () => document.querySelector("input[name=csrfmiddlewaretoken]")?.value
    || (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";

  async function post(url, data) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRFToken": csrf() },
      body: new URLSearchParams(data),
      credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error?.message || `HTTP ${response.status}`);
    return body;
  }

  const form = document.getElementById("topup-form");
  if (form) {
    const stripe = Stripe(form.dataset.publishableKey);
    const card = stripe.elements().create("card");
    const cardBox = document.getElementById("card-element");
    card.mount(cardBox);
    const status = document.getElementById("topup-status");
    const button = document.getElementById("topup-submit");
    form.querySelectorAll("input[name=card]").forEach((radio) =>
      radio.addEventListener("change", () => { cardBox.hidden = radio.value === "saved" && radio.checked; }));

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      status.textContent = "Processing…";
      try {
        const choice = form.querySelector("input[name=card]:checked") || form.querySelector("input[name=card]");
        if (!choice || choice.value === "new") {
          const setup = await post(form.dataset.setupUrl, {});
          const result = await stripe.confirmCardSetup(setup.client_secret, { payment_method: { card } });
          if (result.error) throw new Error(result.error.message || "The card was not accepted.");
          await post(form.dataset.saveUrl, { setup_intent: result.setupIntent.id });
        }
        const paid = await post(form.dataset.topupUrl, {
          api_key: form.elements.api_key.value, pack: form.elements.pack.value,
        });
        if (paid.client_secret) {
          status.textContent = "Waiting for your bank…";
          const result = await stripe.confirmCardPayment(paid.client_secret);
          if (result.error) status.textContent = result.error.message || "Authentication failed.";
        }
        window.location.assign(paid.return_url);
      } catch (error) {
        status.textContent = error.message;
        button.disabled = false;
      }
    });
  }

  const complete = document.getElementById("complete-payment");
  if (complete) {
    const stripe = Stripe(complete.dataset.publishableKey);
    complete.addEventListener("click", async () => {
      complete.disabled = true;
      const result = await stripe.confirmCardPayment(complete.dataset.clientSecret);
      if (result.error) document.getElementById("complete-status").textContent = result.error.message || "Authentication failed.";
      window.location.assign(complete.dataset.returnUrl);
    });
  }
})();
