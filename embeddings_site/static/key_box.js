// The key box's purchase: Stripe.js collects the card (its number goes to Stripe, never here),
// the server charges it once for the key the page's signed token names, and the bank's
// authentication, when asked, is done here before the payment is settled from Stripe.
(function () {
  "use strict";
  const form = document.getElementById("key-box-buy");
  if (!form) return;
  const csrf = () => form.querySelector("input[name=csrfmiddlewaretoken]")?.value || "";

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

  const stripe = Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create("card");
  card.mount(document.getElementById("key-box-card"));
  const status = document.getElementById("key-box-status");
  const button = document.getElementById("key-box-submit");
  const token = form.elements.token.value;

  function show(paid) {
    if (paid.status === "succeeded") {
      status.textContent = `Paid: ${paid.tokens.toLocaleString()} tokens added.`;
      if (paid.receipt_url && /^https?:\/\//.test(paid.receipt_url)) {
        const link = document.createElement("a");
        link.href = paid.receipt_url;
        link.rel = "noopener noreferrer";
        link.id = "key-box-receipt";
        link.textContent = "Stripe's receipt";
        status.append(" ", link);
      }
      const balance = document.getElementById("key-box-balance");
      if (balance && paid.balance !== null) {
        balance.textContent = paid.balance.toLocaleString();
        balance.dataset.balance = paid.balance;
      }
    } else if (paid.status === "failed") {
      status.textContent = paid.message || "The payment did not go through.";
      button.disabled = false;
    } else {
      status.textContent = "The payment is being processed; the balance updates when it completes.";
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    status.textContent = "Processing…";
    try {
      const method = await stripe.createPaymentMethod({ type: "card", card });
      if (method.error || !method.paymentMethod) throw new Error(method.error?.message || "The card was not accepted.");
      let paid = await post(form.dataset.payUrl, {
        token, pack: form.elements.pack.value, payment_method: method.paymentMethod.id,
      });
      if (paid.client_secret) {
        status.textContent = "Waiting for your bank…";
        await stripe.confirmCardPayment(paid.client_secret);
        paid = await post(form.dataset.settleUrl, { token, payment_intent: paid.payment_intent });
      }
      show(paid);
    } catch (error) {
      status.textContent = error.message;
      button.disabled = false;
    }
  });
})();
