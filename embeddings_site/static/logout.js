// Logging out forgets the playground's key too: whoever uses this browser next must not find
// the last user's key in the playground (the key name is playground.js's KEY_STORAGE).
(function () {
  "use strict";
  const KEY_STORAGE = "embeddings.playground.key";
  document.querySelectorAll("form[data-clears-playground-key]").forEach((form) => form.addEventListener("submit", () => {
    try { localStorage.removeItem(KEY_STORAGE); } catch { /* storage disabled: nothing kept */ }
  }));
})();
