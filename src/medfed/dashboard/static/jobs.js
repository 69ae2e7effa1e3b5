/* The job page: polls progress.json and updates the round count, progress bar, state and charts
 * without a reload. Charts read without colour: each line has its own marker and dash pattern,
 * and every axis has a title with its unit. Served from the package (no CDN, no inline script). */
(function () {
  "use strict";
  var live = document.getElementById("job-live");
  if (!live) { return; }
  var url = live.getAttribute("data-progress-url");
  var POLL_MS = 1000;
  var MARKERS = ["circle", "rect", "triangle", "rectRot", "star", "crossRot", "cross", "rectRounded"];
  var DASHES = [[], [6, 4], [2, 3], [10, 3, 2, 3], [1, 1], [8, 8]];
  var COLOURS = ["#0b5cad", "#b35806", "#1b7837", "#762a83", "#a50026", "#4d4d4d", "#01665e", "#8c510a"];
  var LABELS = {eval_accuracy: "test accuracy", eval_auc: "test AUC", eval_loss: "test loss", train_loss: "training loss"};
  var charts = {};

  function text(id, value) {
    var el = document.querySelector("[data-testid=" + id + "]");
    if (el) { el.textContent = String(value); }
  }

  function dataset(label, values, i) {
    return {
      label: label, data: values, spanGaps: true,
      borderColor: COLOURS[i % COLOURS.length], backgroundColor: COLOURS[i % COLOURS.length],
      pointStyle: MARKERS[i % MARKERS.length], pointRadius: 5, borderDash: DASHES[i % DASHES.length]
    };
  }

  function lineChart(id, yTitle, yRange) {
    var canvas = document.getElementById(id);
    if (!canvas || typeof Chart === "undefined") { return null; }
    var y = {title: {display: true, text: yTitle}};
    if (yRange) { y.min = yRange[0]; y.max = yRange[1]; }
    return new Chart(canvas, {
      type: "line",
      data: {labels: [], datasets: []},
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: {legend: {labels: {usePointStyle: true}}},
        scales: {x: {title: {display: true, text: "model after round (0: initial)"}}, y: y}
      }
    });
  }

  function update(chart, labels, named) {
    if (!chart) { return; }
    chart.data.labels = labels;
    chart.data.datasets = named.map(function (pair, i) { return dataset(pair[0], pair[1], i); });
    chart.update();
  }

  function pick(series, keys) {
    return keys.filter(function (k) { return series[k]; }).map(function (k) { return [LABELS[k] || k, series[k]]; });
  }

  function draw(p) {
    text("round-count", p.completed_round);
    text("state", p.state);
    var bar = document.querySelector("[data-testid=round-progress]");
    if (bar) { bar.value = p.completed_round; bar.textContent = p.completed_round + " / " + p.rounds; }
    var rs = p.round_series, ss = p.site_series;
    update(charts.scores, rs.rounds, pick(rs.series, ["eval_accuracy", "eval_auc"]));
    update(charts.loss, rs.rounds, pick(rs.series, ["eval_loss", "train_loss"]));
    var metric = LABELS[ss.metric] || ss.metric || "metric";
    if (charts.sites) { charts.sites.options.scales.y.title.text = metric; }
    update(charts.sites, ss.rounds, Object.keys(ss.sites).map(function (s) { return [s, ss.sites[s]]; }));
    var m = document.getElementById("site-metric");
    if (m) { m.textContent = metric; }
  }

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}, redirect: "manual"})
      .then(function (r) {
        if (r.type === "opaqueredirect" || r.status === 401 || r.status === 403) {
          text("live", "Your session ended: reload the page to log in again.");
          return null;
        }
        return r.ok ? r.json() : null;
      })
      .then(function (p) {
        if (!p) { return; }
        draw(p);
        if (p.finished) {
          text("live", "Finished (" + p.state + "). Reload for downloads and the final comparison.");
        } else {
          window.setTimeout(poll, POLL_MS);
        }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 3); });
  }

  charts.scores = lineChart("chart-scores", "score (mean over sites, 0–1)", [0, 1]);
  charts.loss = lineChart("chart-loss", "binary cross-entropy (nats)", null);
  charts.sites = lineChart("chart-sites", "metric", null);
  var initial = document.getElementById("initial-progress");
  if (initial) { draw(JSON.parse(initial.textContent)); }
  if (live.getAttribute("data-finished") !== "true") { window.setTimeout(poll, POLL_MS); }
}());
