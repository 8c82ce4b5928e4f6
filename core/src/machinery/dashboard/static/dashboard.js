// Machinery dashboard: refresh the live part of the page, and send the action token with each action.
// No build step and no library: a fetch every few seconds (the body's data-refresh), paused while the tab is hidden.
(function () {
  "use strict";
  var TOKEN_KEY = "machinery-dashboard-token";

  function tokenBox() { return document.getElementById("dashboard-token"); }

  function refresh() {
    var live = document.getElementById("live");
    if (!live || document.hidden) { return Promise.resolve(); }
    return fetch(window.location.href, { headers: { "X-Dashboard-Partial": "1" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok && response.status !== 404) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        document.body.dataset.refreshed = String(Date.now());
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); });
  }

  function schedule() {
    var seconds = parseFloat(document.body.dataset.refresh || "2");
    if (!(seconds > 0)) { return; }
    var loop = function () { refresh().then(function () { window.setTimeout(loop, seconds * 1000); }); };
    window.setTimeout(loop, seconds * 1000);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.classList && form.classList.contains("login")) {
      var given = form.querySelector("input[name=token]");
      if (given) { window.sessionStorage.setItem(TOKEN_KEY, given.value); }
      return;
    }
    if (!form.classList || !form.classList.contains("action")) { return; }
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
    var box = tokenBox();
    var field = form.querySelector("input[name=token]");
    if (box && field) { field.value = box.value; }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var box = tokenBox();
    if (box) {
      box.value = window.sessionStorage.getItem(TOKEN_KEY) || "";
      box.addEventListener("input", function () { window.sessionStorage.setItem(TOKEN_KEY, box.value); });
    }
    schedule();
  });
})();
