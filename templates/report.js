// Theme switch: follows the system setting until the reader picks one; nothing leaves the page.
(function () {
  "use strict";
  var root = document.documentElement;
  var button = document.getElementById("theme-toggle");
  var stored = null;
  try { stored = window.localStorage.getItem("reportgen-theme"); } catch (e) { stored = null; }
  if (stored === "light" || stored === "dark") { root.setAttribute("data-theme", stored); }
  function current() {
    var chosen = root.getAttribute("data-theme");
    if (chosen) { return chosen; }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  if (button) {
    button.textContent = current() === "dark" ? "Light" : "Dark";
    button.addEventListener("click", function () {
      var next = current() === "dark" ? "light" : "dark";
      root.setAttribute("data-theme", next);
      button.textContent = next === "dark" ? "Light" : "Dark";
      try { window.localStorage.setItem("reportgen-theme", next); } catch (e) { /* storage may be disabled */ }
    });
  }
  // In a notebook the page is an iframe's srcdoc, where "#id" links resolve against the notebook's address and
  // would leave the page: scroll to the target here instead.
  if (window.location.protocol === "about:") {
    document.addEventListener("click", function (event) {
      var link = event.target && event.target.closest ? event.target.closest("a[href^='#']") : null;
      if (!link) { return; }
      event.preventDefault();
      var target = document.getElementById(decodeURIComponent(link.getAttribute("href").slice(1)));
      if (target) { target.scrollIntoView(); }
    });
  }
  // Folded sections open when a link (or the address) points into them.
  function reveal(id) {
    var target = id ? document.getElementById(id) : null;
    for (var node = target; node; node = node.parentElement) {
      if (node.tagName === "DETAILS") { node.open = true; }
    }
    return target;
  }
  function revealHash() {
    var hash = window.location.hash;
    if (hash.length > 1) {
      var target = reveal(decodeURIComponent(hash.slice(1)));
      if (target) { target.scrollIntoView(); }
    }
  }
  window.addEventListener("hashchange", revealHash);
  revealHash();
  document.addEventListener("click", function (event) {
    var link = event.target && event.target.closest ? event.target.closest("a[href^='#']") : null;
    if (link) { reveal(decodeURIComponent(link.getAttribute("href").slice(1))); }
  }, true);
  // A click on a figure shows it at full size over the page; a click or Escape closes it.
  var lightbox = document.getElementById("lightbox");
  function closeLightbox() { lightbox.hidden = true; lightbox.textContent = ""; }
  if (lightbox) {
    document.addEventListener("click", function (event) {
      var image = event.target;
      if (image && image.classList && image.classList.contains("zoomable")) {
        var big = document.createElement("img");
        big.src = image.src;
        big.alt = image.alt;
        lightbox.textContent = "";
        lightbox.appendChild(big);
        lightbox.hidden = false;
      } else if (!lightbox.hidden && lightbox.contains(image)) {
        closeLightbox();
      }
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && !lightbox.hidden) { closeLightbox(); }
    });
  }
  // On phones the contents start folded so the report itself is visible first.
  var toc = document.querySelector(".toc details");
  if (toc && window.matchMedia && window.matchMedia("(max-width: 800px)").matches) { toc.removeAttribute("open"); }
})();
