// The usage chart: stacked bars per time bucket, drawn as inline SVG from the JSON the page
// carries (#chart-data). No library and no build step. The table under the chart holds the same
// numbers for screen readers and for anyone without JavaScript; the SVG is aria-hidden.
(function () {
  "use strict";
  var holder = document.getElementById("chart");
  var data = document.getElementById("chart-data");
  if (!holder || !data) return;
  var doc = JSON.parse(data.textContent);
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#0a58ca", "#1a7f37", "#bc4c00", "#8250df", "#bf3989", "#0598bc", "#9a6700", "#57606a"];
  var top = doc.series.slice(0, 7);
  if (doc.series.length > 7) {
    var rest = doc.times.map(function (_, i) {
      return doc.series.slice(7).reduce(function (a, s) { return a + s.values[i]; }, 0);
    });
    top.push({ name: "others", values: rest });
  }
  var n = doc.times.length, W = 900, H = 320, L = 70, B = 40, T = 10;
  var totals = doc.times.map(function (_, i) { return top.reduce(function (a, s) { return a + s.values[i]; }, 0); });
  var max = Math.max.apply(null, totals.concat([1]));
  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function short(v) {
    var units = doc.quantity === "bytes" ? ["B", "kB", "MB", "GB", "TB", "PB"] : ["", "k", "M", "G", "T", "P"];
    var u = 0;
    while (Math.abs(v) >= 1000 && u < units.length - 1) { v /= 1000; u++; }
    return (u ? v.toFixed(1) : String(Math.round(v))) + (units[u] ? " " + units[u] : "");
  }
  var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "presentation", focusable: "false" });
  for (var g = 0; g <= 4; g++) {
    var y = T + (H - T - B) * (1 - g / 4);
    svg.appendChild(el("line", { x1: L, x2: W, y1: y, y2: y, stroke: "#d0d7de" }));
    svg.appendChild(el("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 12, fill: "#57606a" }, short(max * g / 4)));
  }
  var slot = (W - L) / n, bar = Math.max(1, slot * 0.75);
  for (var i = 0; i < n; i++) {
    var base = H - B;
    top.forEach(function (s, k) {
      var h = (H - T - B) * s.values[i] / max;
      if (h > 0) {
        var r = el("rect", { x: L + i * slot + (slot - bar) / 2, y: base - h, width: bar, height: h, fill: COLORS[k % COLORS.length] });
        r.appendChild(el("title", {}, doc.times[i] + " · " + s.name + ": " + short(s.values[i])));
        svg.appendChild(r);
        base -= h;
      }
    });
    var every = Math.ceil(n / 12);
    if (i % every === 0) {
      var label = doc.granularity === "hour" ? doc.times[i].slice(11, 16) : doc.times[i].slice(5);
      svg.appendChild(el("text", { x: L + i * slot + slot / 2, y: H - B + 16, "text-anchor": "middle", "font-size": 12, fill: "#57606a" }, label));
    }
  }
  holder.appendChild(svg);
  var legend = document.createElement("div");
  legend.className = "legend";
  top.forEach(function (s, k) {
    var item = document.createElement("span");
    var sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = COLORS[k % COLORS.length];
    item.appendChild(sw);
    item.appendChild(document.createTextNode(s.name));
    legend.appendChild(item);
  });
  holder.appendChild(legend);
  holder.setAttribute("data-drawn", String(n));
})();
