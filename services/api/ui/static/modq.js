// modq console: refresh the overview's live part in place (the page reads fine without this).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var every = Number(live.getAttribute("data-every") || "15") * 1000;
  function refresh() {
    if (document.hidden) { return; }
    fetch(live.getAttribute("data-refresh"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { live.innerHTML = html; live.setAttribute("data-refreshed", new Date().toISOString()); })
      .catch(function () { /* keep what is shown; the next tick tries again */ });
  }
  setInterval(refresh, every);
})();
