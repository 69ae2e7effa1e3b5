/* The Federation page: refresh each site's status, last heartbeat and age from federation.json.
 * A site that is not in the table yet appears after a reload. No inline script (CSP). */
(function () {
  "use strict";
  var live = document.getElementById("federation-live");
  if (!live) { return; }
  var url = live.getAttribute("data-url");
  var POLL_MS = 3000;

  function badge(online) {
    var span = document.createElement("span");
    span.className = "badge " + (online ? "ok" : "bad");
    span.textContent = online ? "online" : "offline";
    return span;
  }

  function draw(data) {
    var count = document.querySelector("[data-testid=online-count]");
    if (count) { count.textContent = String(data.online); }
    data.sites.forEach(function (s) {
      var row = document.querySelector("tr[data-site='" + CSS.escape(s.site) + "']");
      if (!row) { return; }
      var status = row.querySelector("[data-field=status]");
      status.replaceChildren(badge(s.online));
      row.querySelector("[data-field=last_seen_text]").textContent = s.last_seen_text;
      row.querySelector("[data-field=age]").textContent = String(Math.round(s.age_s));
    });
  }

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}, redirect: "manual"})
      .then(function (r) {
        if (r.type === "opaqueredirect" || r.status === 401 || r.status === 403) {
          live.textContent = "Your session ended: reload the page to log in again.";
          return null;
        }
        return r.ok ? r.json() : undefined;  // a server error: try again later
      })
      .then(function (data) {
        if (data) { draw(data); }
        if (data !== null) { window.setTimeout(poll, POLL_MS); }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 3); });
  }

  window.setTimeout(poll, POLL_MS);
}());
