// The site navigation on a narrow screen: the links fold behind a Menu button (site.css hides
// them under 760px while the nav is .collapsible). Without this script they simply wrap.
(function () {
  "use strict";
  const nav = document.querySelector("header.site nav");
  const toggle = nav && nav.querySelector(".nav-toggle");
  if (!toggle) return;
  nav.classList.add("collapsible");
  toggle.hidden = false;
  toggle.addEventListener("click", () => {
    const open = !nav.classList.contains("open");
    nav.classList.toggle("open", open);
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && nav.classList.contains("open")) {
      nav.classList.remove("open");
      toggle.setAttribute("aria-expanded", "false");
      toggle.focus();
    }
  });
})();
