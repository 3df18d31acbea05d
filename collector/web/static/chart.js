// Small SVG trend chart for the bed cards: SpO2 mean (line) and minimum (faint line)
// per bucket, the 90 % line dashed, breaks where data is missing.  No library, no CDN.
// Drawn at the chart's own pixel size (viewBox = CSS pixels), so the labels are real 11 px text
// whatever the card's width, in compact mode too; drawn again when the card changes size.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

// trend: {from_ms, to_ms, bucket_s, points: [{t_ms, spo2_mean, spo2_min}]}
const AXIS_PX = 11;  // label size on screen (also in compact mode): legible at 1366x768

function drawTrend(svg, trend, opts) {
  svg.trendData = trend || null;
  const box = svg.getBoundingClientRect();
  const W = Math.max(120, Math.round(box.width || 300)), H = Math.max(40, Math.round(box.height || 90));
  const padL = 26, padR = 4, padT = 7, padB = AXIS_PX + 5;
  const yMin = (opts && opts.yMin) || 70, yMax = 100;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const x0 = trend ? trend.from_ms : 0, x1 = trend ? Math.max(trend.to_ms, trend.from_ms + 1) : 1;
  const sx = (t) => padL + ((t - x0) / (x1 - x0)) * (W - padL - padR);
  const sy = (v) => padT + (1 - (Math.max(yMin, Math.min(yMax, v)) - yMin) / (yMax - yMin)) * (H - padT - padB);

  // Every grid line gets a label only when the labels do not overlap (a short compact chart labels 70 and 90).
  const roomy = (sy(80) - sy(90)) >= AXIS_PX + 2;
  for (const v of [yMin, 80, 90, 100]) {
    if (v < yMin) continue;
    svg.appendChild(svgEl("line", { x1: padL, x2: W - padR, y1: sy(v), y2: sy(v), class: v === 90 ? "ref90" : "grid" }));
    if (!roomy && v !== yMin && v !== 90) continue;
    const label = svgEl("text", { x: padL - 3, y: sy(v) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = String(v);
    svg.appendChild(label);
  }
  if (!trend || !trend.points.length) {
    const empty = svgEl("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" });
    empty.textContent = t("no data yet");
    svg.appendChild(empty);
    return;
  }
  const maxGap = trend.bucket_s * 1000 * 2.5;
  const path = (key) => {
    let d = "", prevT = null;
    for (const p of trend.points) {
      const v = p[key];
      if (v === null || v === undefined) { prevT = null; continue; }
      const cmd = prevT === null || p.t_ms - prevT > maxGap ? "M" : "L";
      d += `${cmd}${sx(p.t_ms).toFixed(1)},${sy(v).toFixed(1)}`;
      prevT = p.t_ms;
    }
    return d;
  };
  svg.appendChild(svgEl("path", { d: path("spo2_min"), class: "line-min" }));
  svg.appendChild(svgEl("path", { d: path("spo2_mean"), class: "line-mean" }));
  const span = (x1 - x0) / 60000;
  const caption = svgEl("text", { x: W - padR, y: H - 2, class: "axis", "text-anchor": "end" });
  caption.textContent = span >= 90 ? t("{n} h", { n: (span / 60).toFixed(1) }) : t("{m} min", { m: Math.round(span) });
  svg.appendChild(caption);
  const start = svgEl("text", { x: padL, y: H - 2, class: "axis" });
  start.textContent = localHM(x0);
  svg.appendChild(start);
}

// People read the site's local time ([site] timezone) with its offset: "02:10 +08:00".
function localHM(ms) {
  const zone = window.siteTimeZone || "UTC";
  try {
    const parts = new Intl.DateTimeFormat("en-GB", { timeZone: zone, hour: "2-digit", minute: "2-digit", hourCycle: "h23",
      timeZoneName: "longOffset" }).formatToParts(new Date(ms));
    const get = (t) => (parts.find((p) => p.type === t) || {}).value || "";
    const off = get("timeZoneName").replace("GMT", "") || "+00:00";
    return `${get("hour")}:${get("minute")} ${off}`;
  } catch (e) {
    return new Date(ms).toISOString().slice(11, 16) + " UTC";
  }
}

window.drawTrend = drawTrend;
window.localHM = localHM;
