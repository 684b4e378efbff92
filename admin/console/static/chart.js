// A key's requests per minute over the last 24 hours as an inline SVG bar
// chart: admitted requests in one colour, denied ones stacked on top.
import { s, h, fmtTime } from './dom.js';

const W = 720;
const H = 180;
const L = 44; // left margin (y labels)
const B = 22; // bottom margin (x labels)
const T = 8;

export function usageChart(u) {
  const from = Date.parse(u.from);
  const to = Date.parse(u.to);
  const span = Math.max(to - from, 60000);
  const minutes = u.per_minute || [];
  let max = 0;
  for (const m of minutes) max = Math.max(max, m.total);
  const top = niceMax(max);
  const plotW = W - L - 4;
  const plotH = H - B - T;
  const barW = Math.max(plotW / 1440, 2); // at least 2 units: one busy minute stays visible
  const x = (t) => L + ((t - from) / span) * plotW;
  const y = (n) => T + plotH - (n / top) * plotH;
  let ok = '';
  let denied = '';
  for (const m of minutes) {
    const t = Date.parse(m.time);
    if (t < from - 60000 || t > to) continue;
    const good = (m.outcomes && m.outcomes.ok) || 0;
    const bad = m.total - good;
    const x0 = x(t).toFixed(1);
    if (good) ok += `M${x0} ${y(0).toFixed(1)}V${y(good).toFixed(1)}h${barW.toFixed(2)}V${y(0).toFixed(1)}Z`;
    if (bad) denied += `M${x0} ${y(good).toFixed(1)}V${y(m.total).toFixed(1)}h${barW.toFixed(2)}V${y(good).toFixed(1)}Z`;
  }
  const ticks = [];
  for (let i = 0; i <= 4; i++) {
    const t = from + (span * i) / 4;
    ticks.push(s('line', { x1: x(t), x2: x(t), y1: T, y2: T + plotH, class: 'grid' }),
      s('text', { x: x(t), y: H - 6, class: 'axis', 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle' },
        fmtTime(new Date(t).toISOString()).slice(11, 16)));
  }
  const label = `Requests per minute of this key from ${fmtTime(u.from)} to ${fmtTime(u.to)}: ${u.total} in total, at most ${max} in one minute.`;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': label, id: 'usage-chart' },
    s('title', null, label),
    ticks,
    s('line', { x1: L, x2: L + plotW, y1: y(0), y2: y(0), class: 'baseline' }),
    s('line', { x1: L, x2: L + plotW, y1: y(top), y2: y(top), class: 'grid' }),
    s('text', { x: L - 6, y: y(0) + 4, class: 'axis', 'text-anchor': 'end' }, '0'),
    s('text', { x: L - 6, y: y(top) + 4, class: 'axis', 'text-anchor': 'end' }, String(top)),
    ok ? s('path', { d: ok, class: 'bar-ok' }) : null,
    denied ? s('path', { d: denied, class: 'bar-denied' }) : null);
  return h('figure', { class: 'chart-figure' }, svg,
    h('figcaption', null, h('span', { class: 'legend legend-ok' }, 'admitted'), ' ',
      h('span', { class: 'legend legend-denied' }, 'denied'), ' — requests per minute (UTC)'));
}

// niceMax rounds the y-axis top up to 1, 2 or 5 times a power of ten.
function niceMax(n) {
  if (n <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(n));
  for (const f of [1, 2, 5, 10]) if (n <= f * p) return f * p;
  return 10 * p;
}
