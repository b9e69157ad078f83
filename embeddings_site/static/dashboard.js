// The dashboard's buttons: copy the new key, keep it in this browser for the playground, or
// confirm a revocation (in this file rather than an onsubmit attribute: the CSP refuses those).
(function () {
  "use strict";
  document.querySelectorAll("[data-copy-text]").forEach((button) => button.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(button.dataset.copyText); button.textContent = "Copied"; }
    catch { button.textContent = "Select the key and copy it"; }
  }));
  document.querySelectorAll("[data-use-in-playground]").forEach((button) => button.addEventListener("click", () => {
    localStorage.setItem("embeddings.playground.key", button.dataset.useInPlayground);
    window.location.assign(button.dataset.playground);
  }));
  document.querySelectorAll("form[data-confirm]").forEach((form) => form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  }));
})();
