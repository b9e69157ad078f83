// The dashboard's buttons: copy the new key, or keep it in this browser for the playground.
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
})();
