// charts.js: a small SVG chart kit for the dashboard. It owns drawing only; app.js owns the data.
//
//   Charts.line(container, spec)     several series of [x, y] points (time or numeric x, linear or log y)
//   Charts.bars(container, spec)     histogram bars on shared bin edges, with vertical marker lines
//   Charts.heatmap(container, spec)  a rows × cols grid of values with a colour bar
//
// Every chart has axes, tick labels and axis titles (the caller's titles carry the units), and a
// legend when it has more than one series. Charts are drawn at their container's width and drawn
// again when that width changes, so text stays legible from a phone to a wide screen. Only SVG
// presentation attributes are used (no style attributes), which the page's CSP allows.
'use strict';

const Charts = (() => {
  const NS = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#0891b2', '#db2777'];
  const FONT = 12;
  const CHAR_W = 6.8; // rough width of one character at FONT, for laying out labels
  const MIN_WIDTH = 260;

  // Each container's last spec, so that a resize can draw it again.
  const drawn = new WeakMap();
  const widths = new WeakMap();
  const observer = typeof ResizeObserver === 'function'
    ? new ResizeObserver((entries) => {
      // Redraw in the next frame, and only on a real width change: drawing never changes the
      // container's width (the SVG is width 100%), so this cannot loop.
      requestAnimationFrame(() => {
        for (const e of entries) {
          const w = Math.floor(e.contentRect.width);
          if (drawn.has(e.target) && Math.abs((widths.get(e.target) || 0) - w) > 1) render(e.target);
        }
      });
    })
    : null;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function label(parent, x, y, content, attrs) {
    const t = el('text', Object.assign({ x, y, 'font-size': FONT, fill: '#334155' }, attrs), parent);
    t.textContent = content;
    return t;
  }

  // Numbers for tick labels: a true minus sign, no float noise, k/M for large values.
  function fmt(v, step) {
    if (v === 0) return '0';
    const a = Math.abs(v);
    let s;
    if (a >= 1e6 && step >= 1e5) s = `${+(v / 1e6).toFixed(Math.max(0, -Math.floor(Math.log10(step / 1e6))))}M`;
    else if (a >= 1e4 && step >= 1e3) s = `${+(v / 1e3).toFixed(Math.max(0, -Math.floor(Math.log10(step / 1e3))))}k`;
    else if (a < 1e-3) s = v.toExponential(0);
    else {
      // As many decimals as the step needs (0.25 needs two).
      let decimals = step > 0 ? Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) : 2;
      while (decimals < 6 && step > 0 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals++;
      s = v.toFixed(Math.min(6, decimals));
    }
    return s.replace('-', '\u2212');
  }

  // About `count` round ticks covering [lo, hi].
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return { ticks: [lo], step: 1, lo: lo - 1, hi: hi + 1 };
    const raw = (hi - lo) / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    const first = Math.ceil(lo / step - 1e-9) * step;
    const ticks = [];
    for (let v = first; v <= hi + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return { ticks, step, lo, hi };
  }

  // Clock ticks for a time axis given in milliseconds since the epoch.
  function timeTicks(lo, hi, count) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600].map((s) => s * 1000);
    const raw = (hi - lo) / Math.max(1, count);
    const step = steps.find((s) => s >= raw) || steps[steps.length - 1];
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) ticks.push(v);
    return ticks;
  }

  function clock(ms) {
    const d = new Date(ms);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
  }

  // Legend items laid out in rows within `width`; returns the height used.
  function legend(svg, items, x0, y0, width) {
    if (items.length < 2) return 0;
    let x = x0;
    let y = y0;
    const g = el('g', { class: 'legend' }, svg);
    for (const it of items) {
      const w = 22 + it.name.length * CHAR_W + 14;
      if (x > x0 && x + w > x0 + width) {
        x = x0;
        y += 17;
      }
      if (it.marker) {
        el('line', { x1: x, x2: x + 16, y1: y + 6, y2: y + 6, stroke: it.color, 'stroke-width': 2, 'stroke-dasharray': '4 3' }, g);
      } else {
        el('rect', { x, y: y + 1, width: 16, height: 10, fill: it.color, 'fill-opacity': it.fillOpacity || 1 }, g);
      }
      label(g, x + 21, y + 10, it.name, { class: 'legend-label' });
      x += w;
    }
    return y - y0 + 17;
  }

  // The SVG and plot frame shared by line and bar charts: legend on top, y ticks and title on the
  // left, x ticks and title below. Returns the plot rectangle and the svg.
  function frame(container, spec, legendItems, yLabels) {
    const width = Math.max(MIN_WIDTH, Math.floor(container.clientWidth || 600));
    widths.set(container, width);
    const height = spec.height || (width < 480 ? 210 : 240);
    const svg = el('svg', {
      class: 'chart-svg', viewBox: `0 0 ${width} ${height}`, width: '100%',
      role: 'img', 'aria-label': spec.label || spec.yTitle, 'data-chart': spec.kind,
    });
    const yLabelWidth = Math.max(...yLabels.map((s) => s.length), 1) * CHAR_W;
    const left = Math.round(26 + yLabelWidth + 8);
    const right = 14;
    const top = 8 + legend(svg, legendItems, left, 6, width - left - right) + 6;
    const bottom = 44;
    const plot = { x: left, y: top, w: width - left - right, h: Math.max(40, height - top - bottom) };
    el('rect', { x: plot.x, y: plot.y, width: plot.w, height: plot.h, fill: '#ffffff', stroke: '#cbd5e1' }, svg);
    label(svg, plot.x + plot.w / 2, height - 6, spec.xTitle, { 'text-anchor': 'middle', class: 'axis-title x-title', 'font-weight': 600 });
    // Centred on the whole height, and smaller where a long title would not fit (phones).
    label(svg, 0, 0, spec.yTitle, {
      'text-anchor': 'middle', class: 'axis-title y-title', 'font-weight': 600,
      'font-size': Math.min(FONT, Math.floor((height - 8) / (spec.yTitle.length * 0.6))),
      transform: `translate(13 ${height / 2}) rotate(-90)`,
    });
    return { svg, plot, width, height };
  }

  function yAxis(svg, plot, ticks, toY, fmtTick) {
    for (const t of ticks) {
      const y = toY(t);
      el('line', { x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y, stroke: '#e2e8f0' }, svg);
      el('line', { x1: plot.x - 4, x2: plot.x, y1: y, y2: y, stroke: '#64748b' }, svg);
      label(svg, plot.x - 7, y + 4, fmtTick(t), { 'text-anchor': 'end', class: 'tick-label' });
    }
  }

  function xAxis(svg, plot, ticks, toX, fmtTick) {
    let lastRight = -Infinity;
    for (const t of ticks) {
      const x = toX(t);
      const text = fmtTick(t);
      el('line', { x1: x, x2: x, y1: plot.y + plot.h, y2: plot.y + plot.h + 4, stroke: '#64748b' }, svg);
      // Skip a label that would overlap the previous one (narrow screens).
      const half = (text.length * CHAR_W) / 2;
      if (x - half < lastRight + 4) continue;
      label(svg, x, plot.y + plot.h + 17, text, { 'text-anchor': 'middle', class: 'tick-label' });
      lastRight = x + half;
    }
  }

  function emptyNote(svg, plot, text) {
    label(svg, plot.x + plot.w / 2, plot.y + plot.h / 2, text, { 'text-anchor': 'middle', fill: '#94a3b8', class: 'empty-note' });
  }

  function yScale(spec, values) {
    const finite = values.filter((v) => Number.isFinite(v) && (!spec.yLog || v > 0));
    if (spec.yLog) {
      let lo = Math.floor(Math.log10(finite.length ? Math.min(...finite) : 1e-3));
      let hi = Math.ceil(Math.log10(finite.length ? Math.max(...finite) : 1));
      if (spec.yMax !== undefined) hi = Math.max(hi, Math.ceil(Math.log10(spec.yMax)));
      if (hi - lo < 1) lo = hi - 1;
      const every = Math.ceil((hi - lo) / 6);
      const ticks = [];
      for (let k = hi; k >= lo; k -= every) ticks.unshift(10 ** k); // from the top: 1 stays a tick
      return { lo: 10 ** lo, hi: 10 ** hi, ticks, map: Math.log10, fmt: (t) => (t >= 0.01 && t <= 1000 ? String(t) : `1e${Math.round(Math.log10(t))}`.replace('-', '\u2212')) };
    }
    let lo = spec.yMin !== undefined ? spec.yMin : (finite.length ? Math.min(...finite) : 0);
    let hi = spec.yMax !== undefined ? Math.max(spec.yMax, finite.length ? Math.max(...finite) : spec.yMax) : (finite.length ? Math.max(...finite) : 1);
    if (spec.yMin === undefined && spec.yZero && lo > 0) lo = 0;
    if (hi === lo) { hi += Math.abs(hi) * 0.1 || 1; lo -= spec.yMin === undefined ? Math.abs(lo) * 0.1 || 0 : 0; }
    const pad = spec.yMin === undefined ? (hi - lo) * 0.05 : 0;
    const nt = niceTicks(lo - (lo === 0 ? 0 : pad), hi + pad, 5);
    return { lo: nt.lo, hi: nt.hi, ticks: nt.ticks, map: (v) => v, fmt: (t) => fmt(t, nt.step) };
  }

  function drawLine(container, spec) {
    const series = spec.series.map((s, i) => Object.assign({ color: PALETTE[i % PALETTE.length] }, s));
    const points = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
    const ys = yScale(spec, points.map((p) => p[1]));
    const { svg, plot } = frame(container, spec, series.map((s) => ({ name: s.name, color: s.color })), ys.ticks.map(ys.fmt));
    const xs = points.map((p) => p[0]);
    // An empty time axis shows the last minute rather than 1970.
    const now = Date.now();
    let x0 = spec.xMin !== undefined ? spec.xMin : (xs.length ? Math.min(...xs) : (spec.xTime ? now - 60000 : 0));
    let x1 = spec.xMax !== undefined ? spec.xMax : (xs.length ? Math.max(...xs) : (spec.xTime ? now : 1));
    if (x1 <= x0) x1 = x0 + (spec.xTime ? 60000 : 1);
    const toX = (v) => plot.x + ((v - x0) / (x1 - x0)) * plot.w;
    const yl = ys.map(ys.lo);
    const yh = ys.map(ys.hi);
    const toY = (v) => plot.y + plot.h - ((ys.map(v) - yl) / (yh - yl)) * plot.h;
    yAxis(svg, plot, ys.ticks, toY, ys.fmt);
    const count = Math.max(3, Math.floor(plot.w / 75));
    if (spec.xTime) {
      xAxis(svg, plot, timeTicks(x0, x1, count), toX, clock);
    } else {
      const nt = niceTicks(x0, x1, count);
      let { ticks, step } = nt;
      if (spec.xInteger && step < 1) {
        // Counts (epochs, ranks): whole-number ticks only.
        step = 1;
        ticks = [];
        for (let v = Math.ceil(x0); v <= x1; v++) ticks.push(v);
      }
      xAxis(svg, plot, ticks, toX, (t) => fmt(t, step));
    }
    if (!points.length) emptyNote(svg, plot, spec.empty || 'no data yet');
    const clampY = (y) => Math.min(plot.y + plot.h, Math.max(plot.y, y));
    for (const s of series) {
      // A null y breaks the line (an interval without data).
      let d = '';
      let pen = false;
      let shown = 0;
      for (const [x, y] of s.points) {
        if (y === null || !Number.isFinite(y) || (spec.yLog && y <= 0)) { pen = false; continue; }
        d += `${pen ? 'L' : 'M'}${toX(x).toFixed(1)} ${clampY(toY(y)).toFixed(1)}`;
        pen = true;
        shown++;
      }
      const path = el('path', {
        d: d || 'M0 0', fill: 'none', stroke: s.color, 'stroke-width': s.width || 2,
        'stroke-dasharray': s.dash, 'stroke-linejoin': 'round', class: 'series', 'data-series': s.name,
        'data-points': shown,
      }, svg);
      if (!d) path.setAttribute('visibility', 'hidden');
      // Dots where the series is short enough to read them one by one.
      if (s.points.length <= 60) {
        for (const [x, y] of s.points) {
          if (y === null || !Number.isFinite(y) || (spec.yLog && y <= 0)) continue;
          const c = el('circle', { cx: toX(x).toFixed(1), cy: clampY(toY(y)).toFixed(1), r: 2.5, fill: s.color }, svg);
          el('title', {}, c).textContent = `${s.name}: ${spec.xTime ? clock(x) : x} → ${+y.toPrecision(6)}`;
        }
      }
    }
    return svg;
  }

  function drawBars(container, spec) {
    const series = spec.series.map((s, i) => Object.assign({ color: PALETTE[i % PALETTE.length] }, s));
    const edges = spec.edges;
    const values = series.flatMap((s) => s.values);
    const ys = yScale(Object.assign({ yMin: 0 }, spec), values);
    const markers = spec.markers || [];
    const items = series.map((s) => ({ name: s.name, color: s.color, fillOpacity: 0.55 }))
      .concat(markers.map((m) => ({ name: m.name || m.label, color: m.color || '#0f172a', marker: true })));
    const { svg, plot } = frame(container, spec, items.length > 1 ? items : [], ys.ticks.map(ys.fmt));
    const x0 = edges.length ? edges[0] : 0;
    const x1 = edges.length ? edges[edges.length - 1] : 1;
    const toX = (v) => plot.x + ((v - x0) / (x1 - x0 || 1)) * plot.w;
    const toY = (v) => plot.y + plot.h - ((v - ys.lo) / (ys.hi - ys.lo)) * plot.h;
    yAxis(svg, plot, ys.ticks, toY, ys.fmt);
    const nt = niceTicks(x0, x1, Math.max(3, Math.floor(plot.w / 75)));
    xAxis(svg, plot, nt.ticks, toX, (t) => fmt(t, nt.step));
    if (!edges.length) emptyNote(svg, plot, spec.empty || 'no data yet');
    for (const s of series) {
      const g = el('g', { class: 'series', 'data-series': s.name }, svg);
      s.values.forEach((v, i) => {
        if (!(v > 0)) return;
        const xa = toX(edges[i]);
        const xb = toX(edges[i + 1]);
        const y = toY(Math.min(v, ys.hi));
        const r = el('rect', {
          x: xa.toFixed(1), y: y.toFixed(1), width: Math.max(0.5, xb - xa - 0.5).toFixed(1),
          height: (plot.y + plot.h - y).toFixed(1), fill: s.color, 'fill-opacity': 0.55, stroke: s.color, 'stroke-width': 0.5,
        }, g);
        el('title', {}, r).textContent = `${s.name}: ${fmt(edges[i], nt.step / 10)} … ${fmt(edges[i + 1], nt.step / 10)}: ${+v.toPrecision(4)}${spec.valueUnit || ''}`;
      });
    }
    for (const m of markers) {
      if (!(m.x >= x0 && m.x <= x1)) continue;
      const x = toX(m.x);
      const color = m.color || '#0f172a';
      el('line', { x1: x, x2: x, y1: plot.y, y2: plot.y + plot.h, stroke: color, 'stroke-width': 2, 'stroke-dasharray': '5 3', class: 'marker' }, svg);
      const leftSide = x > plot.x + plot.w / 2;
      label(svg, leftSide ? x - 5 : x + 5, plot.y + 14, m.label, { 'text-anchor': leftSide ? 'end' : 'start', fill: color, class: 'marker-label' });
    }
    return svg;
  }

  // Colour scale from dark blue through teal to yellow (viridis-like, readable in grey too).
  const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function colour(t) {
    const u = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(u));
    const f = u - i;
    const c = STOPS[i].map((a, k) => Math.round(a + (STOPS[i + 1][k] - a) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function drawHeatmap(container, spec) {
    const { rows, cols, values } = spec;
    const finite = values.filter(Number.isFinite);
    const lo = spec.min !== undefined ? spec.min : Math.min(...finite);
    let hi = spec.max !== undefined ? spec.max : Math.max(...finite);
    if (!(hi > lo)) hi = lo + 1;
    const width = Math.max(MIN_WIDTH, Math.floor(container.clientWidth || 400));
    widths.set(container, width);
    const cb = niceTicks(lo, hi, 5);
    const cbLabelW = Math.max(...cb.ticks.map((t) => fmt(t, cb.step).length)) * CHAR_W;
    const left = 44;
    const right = 30 + 14 + cbLabelW + 26; // colour bar, its labels and its title
    const avail = Math.min(width - left - right, spec.maxSize || 420);
    const cell = Math.max(1, avail / Math.max(cols, rows));
    const plot = { x: left, y: 10, w: cell * cols, h: cell * rows };
    const height = Math.round(plot.y + plot.h + 44);
    const svg = el('svg', {
      class: 'chart-svg', viewBox: `0 0 ${width} ${height}`, width: '100%',
      role: 'img', 'aria-label': spec.label || spec.colorTitle, 'data-chart': 'heatmap',
    });
    const g = el('g', { class: 'cells' }, svg);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = values[r * cols + c];
        // A hair wider than the cell, so that no seams show between neighbours.
        el('rect', {
          x: (plot.x + c * cell).toFixed(2), y: (plot.y + r * cell).toFixed(2),
          width: (cell + 0.3).toFixed(2), height: (cell + 0.3).toFixed(2), fill: colour((v - lo) / (hi - lo)),
        }, g);
      }
    }
    el('rect', { x: plot.x, y: plot.y, width: plot.w, height: plot.h, fill: 'none', stroke: '#64748b' }, svg);
    // Axis ticks in cell indices (0-based, as the API counts features).
    const tickEvery = (n) => niceTicks(0, n - 1, Math.max(2, Math.floor((n * cell) / 60))).ticks.filter(Number.isInteger);
    for (const t of tickEvery(cols)) {
      const x = plot.x + (t + 0.5) * cell;
      el('line', { x1: x, x2: x, y1: plot.y + plot.h, y2: plot.y + plot.h + 4, stroke: '#64748b' }, svg);
      label(svg, x, plot.y + plot.h + 16, String(t), { 'text-anchor': 'middle', class: 'tick-label' });
    }
    for (const t of tickEvery(rows)) {
      const y = plot.y + (t + 0.5) * cell;
      el('line', { x1: plot.x - 4, x2: plot.x, y1: y, y2: y, stroke: '#64748b' }, svg);
      label(svg, plot.x - 6, y + 4, String(t), { 'text-anchor': 'end', class: 'tick-label' });
    }
    label(svg, plot.x + plot.w / 2, height - 6, spec.xTitle, { 'text-anchor': 'middle', class: 'axis-title x-title', 'font-weight': 600 });
    label(svg, 0, 0, spec.yTitle, {
      'text-anchor': 'middle', class: 'axis-title y-title', 'font-weight': 600,
      transform: `translate(12 ${plot.y + plot.h / 2}) rotate(-90)`,
    });
    // The colour bar: stacked rects from lo (bottom) to hi (top), with its own ticks and title.
    const bx = plot.x + plot.w + 18;
    const steps = 48;
    for (let i = 0; i < steps; i++) {
      el('rect', {
        x: bx, y: (plot.y + plot.h - ((i + 1) * plot.h) / steps).toFixed(2), width: 14,
        height: (plot.h / steps + 0.3).toFixed(2), fill: colour((i + 0.5) / steps),
      }, svg);
    }
    el('rect', { x: bx, y: plot.y, width: 14, height: plot.h, fill: 'none', stroke: '#64748b', class: 'colour-bar' }, svg);
    for (const t of cb.ticks) {
      const y = plot.y + plot.h - ((t - lo) / (hi - lo)) * plot.h;
      if (y < plot.y - 0.5 || y > plot.y + plot.h + 0.5) continue;
      el('line', { x1: bx + 14, x2: bx + 18, y1: y, y2: y, stroke: '#64748b' }, svg);
      label(svg, bx + 21, y + 4, fmt(t, cb.step), { class: 'tick-label' });
    }
    label(svg, 0, 0, spec.colorTitle, {
      'text-anchor': 'middle', class: 'axis-title colour-title', 'font-weight': 600,
      transform: `translate(${(bx + 21 + cbLabelW + 12).toFixed(1)} ${plot.y + plot.h / 2}) rotate(-90)`,
    });
    return svg;
  }

  const KINDS = { line: drawLine, bars: drawBars, heatmap: drawHeatmap };

  function render(container) {
    const entry = drawn.get(container);
    if (!entry) return;
    const svg = KINDS[entry.kind](container, Object.assign({ kind: entry.kind }, entry.spec));
    container.replaceChildren(svg);
  }

  function draw(kind, container, spec) {
    if (!container) return;
    for (const key of ['xTitle', 'yTitle']) {
      if (!spec[key]) throw new Error(`chart ${container.id}: ${key} is required`);
    }
    const first = !drawn.has(container);
    drawn.set(container, { kind, spec });
    render(container);
    if (first && observer) observer.observe(container);
  }

  return {
    line: (container, spec) => draw('line', container, spec),
    bars: (container, spec) => draw('bars', container, spec),
    heatmap: (container, spec) => draw('heatmap', container, spec),
    colour,
  };
})();
