// app.js: the dashboard's data and layout. It reads the server's JSON routes and /metrics, keeps
// the time series in this page's memory (nothing is stored anywhere else), and leaves the drawing
// to charts.js. Every request goes to this origin (the CSP allows nothing else).
'use strict';

(() => {
  const POLL_MS = 2000; // metrics, drift and jobs
  const MODELS_EVERY = 5; // polls between two reads of /models
  const KEEP_POINTS = 300; // per series: 10 minutes at POLL_MS
  const SHOW_ROWS = 500; // score results listed in the table
  const EXPLAIN_BUDGET = 30000; // candidate rows one automatic /explain may cost (D × grid per row)
  const SCORING_ROUTE = /\/(log_prob|score|encode|decode|sample|inpaint|explain|infer)$/;
  const TIME_AXIS = 'time (local clock, hh:mm:ss)';

  // The admin token lives in this variable only: never in storage, cookies, URLs or the DOM. A
  // reload forgets it.
  let adminToken = null;

  const state = {
    models: null, // GET /models
    selected: null, // model name in the picker
    card: null, // GET /models/{name} of the selected name
    cardFor: null, // "name/version" of that card
    prevMetrics: null, // the last /metrics sample, for deltas
    traffic: { all: [], scoring: [], p50: [], p95: [], p99: [], batchMean: [], batchP95: [], queue: new Map() },
    perModel: new Map(), // name -> { flagged, window, p } series
    jobs: [],
    jobId: null, // the job shown in detail
    jobStates: new Map(), // id -> last seen state, to notice a job finishing
    polls: 0,
    sampleUrl: null,
  };

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // ---- requests ---------------------------------------------------------------------------

  // fetch with the server's JSON errors turned into readable exceptions.
  async function api(path, { method = 'GET', body, headers = {}, admin = false, as = 'json' } = {}) {
    const h = Object.assign({}, headers);
    if (admin) {
      if (!adminToken) throw new Error('an admin token is needed: type it in the "Admin token" field first');
      h.Authorization = `Bearer ${adminToken}`;
    }
    let res;
    try {
      res = await fetch(path, { method, body, headers: h, cache: 'no-store', credentials: 'omit', redirect: 'error' });
    } catch (e) {
      throw new Error(`${method} ${path}: no answer from the server (${e.message})`);
    }
    if (!res.ok) {
      let detail = res.statusText || 'error';
      try {
        const j = await res.json();
        if (j && typeof j.error === 'string') detail = j.error;
      } catch (_) { /* not JSON: keep the status text */ }
      const err = new Error(`${method} ${path} failed (${res.status}): ${detail}`);
      err.status = res.status;
      throw err;
    }
    if (as === 'text') return res.text();
    if (as === 'blob') return res.blob();
    return res.json();
  }

  function message(id, text, kind) {
    const node = $(id);
    node.textContent = text || '';
    if (kind) node.dataset.kind = kind;
    else delete node.dataset.kind;
  }

  const globalErrors = new Map();
  function setGlobalError(key, err) {
    if (err) globalErrors.set(key, err.message || String(err));
    else globalErrors.delete(key);
    const banner = $('global-error');
    banner.textContent = [...globalErrors.values()].join(' · ');
    banner.hidden = globalErrors.size === 0;
  }

  // ---- formatting -------------------------------------------------------------------------

  const num = (v, digits = 4) => (v === null || v === undefined || !Number.isFinite(v) ? '—' : (+v.toPrecision(digits)).toString().replace('-', '\u2212'));
  const fixed = (v, d) => (Number.isFinite(v) ? v.toFixed(d).replace('-', '\u2212') : '—');
  const pct = (v, d = 1) => (Number.isFinite(v) ? `${(v * 100).toFixed(d)}%` : '—');
  function pValue(p) {
    if (p === null || p === undefined || !Number.isFinite(p)) return '—';
    if (p === 0) return '< 1e−300';
    return p < 1e-3 ? p.toExponential(2).replace('-', '\u2212') : p.toFixed(4);
  }
  function duration(s) {
    if (!Number.isFinite(s)) return '';
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  // RFC 3339 UTC times, to the second.
  const when = (t) => (typeof t === 'string' ? t.replace('T', ' ').replace(/(\.\d+)?Z$/, ' UTC') : '—');

  function push(series, point) {
    series.push(point);
    if (series.length > KEEP_POINTS) series.splice(0, series.length - KEEP_POINTS);
  }

  function modelSeries(name) {
    if (!state.perModel.has(name)) state.perModel.set(name, { flagged: [], window: [], p: [] });
    return state.perModel.get(name);
  }

  function cell(tr, text, attrs) {
    const td = document.createElement('td');
    td.textContent = text;
    for (const [k, v] of Object.entries(attrs || {})) td.setAttribute(k, v);
    tr.appendChild(td);
    return td;
  }

  // ---- models and the card ----------------------------------------------------------------

  const nameEntry = (name) => (state.models ? state.models.models.find((m) => m.name === name) : undefined);

  async function loadModels() {
    const data = await api('/models');
    state.models = data;
    const names = data.models.map((m) => m.name);
    if (!state.selected || !names.includes(state.selected)) {
      state.selected = (data.default && data.default.name) || names[0] || null;
    }
    const select = $('model-select');
    const labels = data.models.map((m) => `${m.name}${m.live ? ` (live v${m.live})` : ' (not loaded)'}`);
    // Rebuilt only when it changes, so that an open picker is not reset under the user.
    if ([...select.options].map((o) => o.textContent).join('\n') !== labels.join('\n')) {
      select.replaceChildren(...data.models.map((m, i) => {
        const o = document.createElement('option');
        o.value = m.name;
        o.textContent = labels[i];
        return o;
      }));
    }
    if (state.selected) select.value = state.selected;
    renderModelsTable();
    renderLive();
    const entry = nameEntry(state.selected);
    const live = entry && entry.live ? `${entry.name}/${entry.live}` : null;
    if (live !== state.cardFor) await loadCard();
  }

  function renderModelsTable() {
    const body = $('models-table').tBodies[0];
    const rows = [];
    for (const m of state.models.models) {
      for (const v of m.versions) {
        const tr = document.createElement('tr');
        tr.className = 'selectable' + (m.name === state.selected ? ' selected' : '');
        tr.dataset.model = m.name;
        tr.dataset.version = v.version;
        tr.dataset.live = String(!!v.live);
        tr.dataset.state = v.state;
        cell(tr, m.name + (m.default ? ' (default)' : ''));
        cell(tr, v.version);
        const st = cell(tr, v.state === 'unavailable' ? `unavailable: ${v.reason}` : v.state);
        if (v.state === 'unavailable') st.className = 'wrap';
        cell(tr, v.live ? 'live' : '');
        const card = v.card || {};
        cell(tr, card.architecture ? String(card.architecture.dim) : '—');
        const t = card.training || {};
        cell(tr, Number.isFinite(t.test_log_likelihood) ? `${fixed(t.test_log_likelihood, 1)} nats` : '—');
        tr.addEventListener('click', () => selectModel(m.name));
        rows.push(tr);
      }
    }
    body.replaceChildren(...rows);
  }

  function renderLive() {
    const node = $('live-model');
    const entry = nameEntry(state.selected);
    if (!entry) {
      node.textContent = 'no model';
      return;
    }
    const v = entry.versions.find((x) => x.live);
    node.textContent = entry.live
      ? `${entry.name} v${entry.live} · live${v ? `, ${v.state}` : ''}${entry.default ? ' · default' : ''}`
      : `${entry.name}: no live version loaded`;
    node.dataset.model = entry.name;
    node.dataset.version = entry.live || '';
  }

  async function selectModel(name) {
    if (!name || name === state.selected) return;
    state.selected = name;
    $('model-select').value = name;
    renderModelsTable();
    renderLive();
    clearScoreResults();
    try {
      await loadCard();
      await pollDrift();
      setGlobalError('card', null);
    } catch (e) {
      setGlobalError('card', e);
    }
  }

  async function loadCard() {
    const entry = nameEntry(state.selected);
    state.card = null;
    state.cardFor = null;
    if (!entry || !entry.live) {
      renderCard(entry);
      return;
    }
    const card = await api(`/models/${enc(entry.name)}`);
    state.card = card;
    state.cardFor = `${card.name}/${card.version}`;
    renderCard(entry);
    drawDriftSeries();
    const image = card.input && card.input.shape.length === 2;
    $('panel-image').hidden = !image;
    if (image) {
      await Promise.all([loadSpectrum(), drawSamples()]);
    }
  }

  function renderCard(entry) {
    const dl = $('card');
    const items = [];
    const add = (key, label, value) => {
      const dt = document.createElement('dt');
      dt.textContent = label;
      const dd = document.createElement('dd');
      dd.textContent = value;
      dd.dataset.testid = `card-${key}`;
      items.push(dt, dd);
    };
    const c = state.card;
    if (!c) {
      add('name', 'model', entry ? `${entry.name}: not loaded (load it with POST /models/${entry.name}/load)` : 'no model');
      dl.replaceChildren(...items);
      drawTrainingCurve([]);
      return;
    }
    const a = c.architecture;
    const t = c.training;
    add('name', 'model', `${c.name} v${c.version}, created ${when(c.created)}`);
    add('architecture', 'architecture', `${a.couplings} couplings × ${a.hidden_layers} hidden layers × ${a.hidden_units} units; ${c.prior} prior; ${c.preprocess.kind} preprocessing`);
    add('shape', 'input shape', `${c.input.shape.join(' × ')} (D = ${a.dim}${c.input.eight_bit ? ', 8-bit image' : ''})`);
    add('test-ll', 'test log-likelihood', t && Number.isFinite(t.test_log_likelihood)
      ? `${fixed(t.test_log_likelihood, 1)} nats per row (${fixed(t.test_bits_per_dim, 3)} bits/dim, ${t.test_rows} rows)`
      : '— (trained without a test set)');
    if (t) {
      add('validation-ll', 'validation log-likelihood', `${fixed(t.val_log_likelihood, 1)} nats per row (${fixed(t.val_bits_per_dim, 3)} bits/dim)`);
      add('training', 'training', `${t.train_rows} rows (${t.val_rows} for validation), best epoch ${t.best_epoch} of ${t.epochs}, ${duration(t.wall_seconds)}; data ${t.data}`);
    }
    add('calibration', 'calibration', c.calibration
      ? `${c.calibration.rows} rows; threshold ${fixed(c.calibration.threshold, 1)} nats (quantile ${c.calibration.threshold_quantile})`
      : 'none (no p-values or drift test)');
    add('device', 'device', String(c.device));
    dl.replaceChildren(...items);
    drawTrainingCurve(t && t.history ? t.history : []);
  }

  function drawTrainingCurve(history) {
    Charts.line($('chart-training-curve'), {
      label: 'training curve',
      xTitle: 'epoch (count)',
      yTitle: 'log-likelihood (nats/row)',
      xInteger: true,
      empty: 'no training history in this card',
      series: [
        { name: 'train', points: history.map((r) => [r.epoch, r.train_log_likelihood]) },
        { name: 'validation', points: history.map((r) => [r.epoch, r.val_log_likelihood]) },
      ],
    });
  }

  // ---- drift and anomalies ----------------------------------------------------------------

  async function pollDrift() {
    const c = state.card;
    if (!c) return;
    if (!c.calibration) {
      // The route answers 409 here; the card already says so, so nothing is requested.
      message('drift-message', 'This model has no calibration rows: no p-values, threshold or drift test.');
      drawHistogram(null);
      return;
    }
    const name = c.name;
    const r = await api(`/models/${enc(name)}/drift`);
    if (!state.card || state.card.name !== name) return; // the picker moved on meanwhile
    const now = Date.now();
    const p = $('drift-p-value');
    p.textContent = pValue(r.p_value);
    p.dataset.pValue = String(r.p_value);
    p.classList.toggle('alarm', r.window_rows > 0 && r.p_value < 1e-3);
    $('drift-ks').textContent = fixed(r.ks_statistic, 3);
    $('drift-window').textContent = `${r.window_rows} / ${r.window_size}`;
    $('drift-share').textContent = r.window_anomaly_share === null ? '—' : pct(r.window_anomaly_share);
    const outside = [];
    if (r.histogram.window_below_range > 0) outside.push(`${pct(r.histogram.window_below_range)} of the recent rows lie below the plotted range`);
    if (r.histogram.window_above_range > 0) outside.push(`${pct(r.histogram.window_above_range)} above it`);
    message('drift-message', r.window_rows === 0
      ? 'No row scored since this version went live: the recent-scores histogram fills as rows are scored.'
      : `Recent window: the last ${r.window_rows} rows scored by any route. ${outside.join(', ')}${outside.length ? '.' : ''}`);
    drawHistogram(r);
    const s = modelSeries(name);
    if (r.window_rows > 0) {
      push(s.window, [now, r.window_anomaly_share * 100]);
      push(s.p, [now, Math.max(r.p_value, 1e-300)]);
    }
    drawDriftSeries();
  }

  function drawHistogram(r) {
    const shares = (v) => v.map((x) => x * 100);
    Charts.bars($('chart-drift-histogram'), {
      label: 'score histogram',
      xTitle: 'log p(x) (nats; lower is more anomalous)',
      yTitle: 'share of rows (%)',
      valueUnit: '%',
      edges: r ? r.histogram.edges : [],
      empty: 'no calibration',
      series: r ? [
        { name: `calibration (${state.card.calibration.rows} rows)`, values: shares(r.histogram.calibration), color: '#64748b' },
        { name: `recent live (${r.window_rows} rows)`, values: shares(r.histogram.window), color: '#dc2626' },
      ] : [],
      markers: r ? [{ x: r.threshold, name: 'anomaly threshold', label: `threshold ${fixed(r.threshold, 1)} nats`, color: '#0f172a' }] : [],
    });
  }

  function drawDriftSeries() {
    const c = state.card;
    const s = c ? modelSeries(c.name) : { flagged: [], window: [], p: [] };
    Charts.line($('chart-anomaly-rate'), {
      label: 'anomaly rate',
      xTime: true,
      xTitle: TIME_AXIS,
      yTitle: 'anomaly rate (% of rows)',
      yZero: true,
      empty: 'no rows scored yet',
      series: [
        { name: 'flagged by /score between polls', points: s.flagged },
        { name: 'recent window below threshold', points: s.window, dash: '6 4' },
      ],
    });
    Charts.line($('chart-drift-p'), {
      label: 'drift p-value',
      xTime: true,
      xTitle: TIME_AXIS,
      yTitle: 'KS p-value (probability, log)',
      yLog: true,
      yMax: 1,
      empty: 'no rows scored yet',
      series: [{ name: 'p-value', points: s.p }],
    });
  }

  // ---- /metrics -----------------------------------------------------------------------------

  // Prometheus text format: `name{label="value",...} number` lines; comments skipped.
  function parseMetrics(text) {
    const samples = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split('\n')) {
      if (!raw || raw[0] === '#') continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        for (const p of m[2].matchAll(pair)) labels[p[1]] = p[2].replace(/\\(.)/g, (_, ch) => (ch === 'n' ? '\n' : ch));
      }
      const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
      samples.push({ name: m[1], labels, value });
    }
    return samples;
  }

  const total = (samples, name, keep = () => true) =>
    samples.filter((s) => s.name === name && keep(s.labels)).reduce((a, s) => a + s.value, 0);

  // A histogram's cumulative bucket counts summed over the series kept: le -> count.
  function buckets(samples, name, keep = () => true) {
    const out = new Map();
    for (const s of samples) {
      if (s.name !== `${name}_bucket` || !keep(s.labels)) continue;
      const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
      out.set(le, (out.get(le) || 0) + s.value);
    }
    return out;
  }

  // Counts between two scrapes, ascending by bucket bound; null after a counter reset.
  function bucketDelta(now, before) {
    const out = [];
    for (const [le, c] of now) {
      const d = c - (before.get(le) || 0);
      if (d < 0) return null;
      out.push([le, d]);
    }
    return out.sort((a, b) => a[0] - b[0]);
  }

  // The q-quantile of cumulative buckets, interpolated inside the bucket (as Prometheus'
  // histogram_quantile does); null without observations.
  function quantile(q, cumulative) {
    if (!cumulative || !cumulative.length) return null;
    const n = cumulative[cumulative.length - 1][1];
    if (!(n > 0)) return null;
    const rank = q * n;
    let lower = 0;
    let below = 0;
    for (const [le, c] of cumulative) {
      if (c >= rank) {
        if (le === Infinity) return lower;
        return lower + (le - lower) * ((rank - below) / Math.max(c - below, 1e-12));
      }
      lower = le;
      below = c;
    }
    return lower;
  }

  async function pollMetrics() {
    const samples = parseMetrics(await api('/metrics', { as: 'text' }));
    const now = Date.now();
    const t = state.traffic;
    const prev = state.prevMetrics;
    state.prevMetrics = { t: now, samples };
    for (const s of samples) {
      if (s.name !== 'flowscore_queue_depth') continue;
      if (!t.queue.has(s.labels.model)) t.queue.set(s.labels.model, []);
      push(t.queue.get(s.labels.model), [now, s.value]);
    }
    if (prev) {
      const dt = (now - prev.t) / 1000;
      const scoring = (l) => SCORING_ROUTE.test(l.route || '');
      const delta = (name, keep) => total(samples, name, keep) - total(prev.samples, name, keep);
      const rate = (d) => (d >= 0 ? d / dt : null);
      push(t.all, [now, rate(delta('flowscore_http_requests_total'))]);
      push(t.scoring, [now, rate(delta('flowscore_http_requests_total', scoring))]);
      const lat = bucketDelta(
        buckets(samples, 'flowscore_http_request_duration_seconds', scoring),
        buckets(prev.samples, 'flowscore_http_request_duration_seconds', scoring),
      );
      for (const [key, q] of [['p50', 0.5], ['p95', 0.95], ['p99', 0.99]]) {
        const v = quantile(q, lat);
        push(t[key], [now, v === null ? null : v * 1000]);
      }
      const batches = delta('flowscore_batch_rows_count');
      const rows = delta('flowscore_batch_rows_sum');
      push(t.batchMean, [now, batches > 0 ? rows / batches : null]);
      push(t.batchP95, [now, quantile(0.95, bucketDelta(buckets(samples, 'flowscore_batch_rows'), buckets(prev.samples, 'flowscore_batch_rows')))]);
      // Flagged rows per judged row of the selected model, between the two scrapes.
      if (state.card) {
        const name = state.card.name;
        const flagged = delta('flowscore_anomalies_total', (l) => l.model === name);
        const scored = delta('flowscore_judged_rows_total', (l) => l.model === name);
        if (scored > 0 && flagged >= 0) push(modelSeries(name).flagged, [now, (100 * flagged) / scored]);
      }
    }
    drawTraffic();
  }

  function drawTraffic() {
    const t = state.traffic;
    const common = { xTime: true, xTitle: TIME_AXIS, yZero: true, empty: 'waiting for the second sample' };
    Charts.line($('chart-request-rate'), Object.assign({}, common, {
      label: 'request rate',
      yTitle: 'requests per second (req/s)',
      series: [{ name: 'all routes', points: t.all }, { name: 'scoring routes', points: t.scoring }],
    }));
    Charts.line($('chart-latency'), Object.assign({}, common, {
      label: 'latency percentiles',
      yTitle: 'latency (ms)',
      empty: 'no scoring request yet',
      series: [{ name: 'p50', points: t.p50 }, { name: 'p95', points: t.p95 }, { name: 'p99', points: t.p99 }],
    }));
    Charts.line($('chart-batch'), Object.assign({}, common, {
      label: 'batch sizes',
      yTitle: 'rows per batch (rows)',
      empty: 'no batch yet',
      series: [{ name: 'mean', points: t.batchMean }, { name: 'p95', points: t.batchP95 }],
    }));
    Charts.line($('chart-queue'), Object.assign({}, common, {
      label: 'queue depth',
      yTitle: 'requests waiting (requests)',
      empty: 'no model queue yet',
      series: [...t.queue].map(([model, points]) => ({ name: model, points })),
    }));
    drawDriftSeries();
  }

  // ---- training jobs (admin) ----------------------------------------------------------------

  const NO_TOKEN = 'An admin token is needed for this: type it in the "Admin token" field and press "Use token". Nothing was sent.';

  function setToken(value) {
    adminToken = value || null;
    $('token-status').textContent = adminToken
      ? 'Token held in this page\'s memory only (a reload or "Forget token" drops it).'
      : 'No token: admin actions are off.';
    $('token-status').dataset.held = String(!!adminToken);
  }

  // A refused token is dropped, so that the page does not keep sending it.
  function adminFailed(err, verb) {
    if (err.status === 401 || err.status === 403) setToken(null);
    message('train-message', `${verb}: ${err.message}`, 'error');
  }

  async function pollJobs() {
    if (!adminToken) {
      if (!state.jobs.length) renderJobs();
      return;
    }
    let jobs;
    try {
      jobs = await api('/train', { admin: true });
    } catch (e) {
      adminFailed(e, 'Reading the training jobs');
      return;
    }
    jobs.sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1 : 0));
    state.jobs = jobs;
    let finished = false;
    for (const j of jobs) {
      const before = state.jobStates.get(j.id);
      if (before && before !== j.state && !['queued', 'running'].includes(j.state)) finished = true;
      state.jobStates.set(j.id, j.state);
    }
    if (!state.jobId || !jobs.some((j) => j.id === state.jobId)) {
      const active = jobs.find((j) => j.state === 'running' || j.state === 'queued');
      state.jobId = (active || jobs[0] || {}).id || null;
    }
    renderJobs();
    // A finished job may have written a version or made a new name live.
    if (finished) await loadModels();
  }

  function renderJobs() {
    const body = $('jobs-table').tBodies[0];
    if (!adminToken && !state.jobs.length) {
      const tr = document.createElement('tr');
      cell(tr, 'Enter the admin token to list and start training jobs.', { colspan: '6', class: 'muted wrap' });
      body.replaceChildren(tr);
      $('job-detail').hidden = true;
      return;
    }
    body.replaceChildren(...state.jobs.map((j) => {
      const tr = document.createElement('tr');
      tr.className = 'selectable' + (j.id === state.jobId ? ' selected' : '');
      tr.dataset.jobId = j.id;
      tr.dataset.state = j.state;
      cell(tr, j.id);
      cell(tr, j.state);
      cell(tr, j.model ? `${j.model.name} v${j.model.version}` : j.name);
      cell(tr, j.dataset);
      cell(tr, `${j.epoch} / ${j.max_epochs}`);
      cell(tr, when(j.created));
      tr.addEventListener('click', () => {
        state.jobId = j.id;
        renderJobs();
      });
      return tr;
    }));
    if (!state.jobs.length) {
      const tr = document.createElement('tr');
      cell(tr, 'No training job yet.', { colspan: '6', class: 'muted' });
      body.replaceChildren(tr);
    }
    renderJob(state.jobs.find((j) => j.id === state.jobId));
  }

  function renderJob(j) {
    const box = $('job-detail');
    box.hidden = !j;
    if (!j) return;
    box.dataset.jobId = j.id;
    $('job-title').textContent = `Job ${j.id}: ${j.name}, ${j.dataset}`;
    const badge = $('job-state');
    badge.textContent = j.state;
    badge.dataset.state = j.state;
    const active = j.state === 'queued' || j.state === 'running';
    $('job-cancel').disabled = !(active || j.state === 'interrupted');
    const max = Math.max(1, j.max_epochs);
    let done = j.state === 'succeeded' ? 1 : Math.min(1, Math.max(0, (Math.max(0, j.epoch - 1) + j.progress) / max));
    if (j.state === 'queued') done = 0;
    $('job-progress').value = done;
    $('job-progress').dataset.value = String(done);
    $('job-progress-text').textContent = j.state === 'succeeded'
      ? `done: ${j.history.length} epochs (cap ${j.max_epochs})`
      : `epoch ${j.epoch} of ${j.max_epochs}, ${Math.round(j.progress * 100)}% of this epoch`;
    $('job-eta').textContent = active && Number.isFinite(j.eta_seconds) ? `ETA ${duration(j.eta_seconds)} (if every epoch runs)` : '';
    const parts = [];
    if (j.model) parts.push(`Wrote ${j.model.name} v${j.model.version}.`);
    if (j.promotion_reason) parts.push(`${j.promoted ? 'Promoted' : 'Not promoted'}: ${j.promotion_reason}.`);
    if (Number.isFinite(j.best_val_log_likelihood)) parts.push(`Best validation log-likelihood ${fixed(j.best_val_log_likelihood, 2)} nats.`);
    if (j.error) parts.push(`Error: ${j.error}`);
    $('job-result').textContent = parts.join(' ');
    Charts.line($('chart-job-curve'), {
      label: 'job training curve',
      xTitle: 'epoch (count)',
      yTitle: 'log-likelihood (nats/row)',
      xInteger: true,
      empty: active ? 'waiting for the first epoch' : 'no finished epoch',
      series: [
        { name: 'train', points: j.history.map((r) => [r.epoch, r.train_log_likelihood]) },
        { name: 'validation', points: j.history.map((r) => [r.epoch, r.val_log_likelihood]) },
      ],
    });
  }

  async function startTraining(ev) {
    ev.preventDefault();
    if (!adminToken) {
      message('train-message', NO_TOKEN, 'error');
      return;
    }
    const path = $('train-dataset').value.trim();
    const epochs = Number($('train-epochs').value);
    if (!path) {
      message('train-message', 'Give the dataset: a file in the server\'s data folder (IDX, CSV or NPY).', 'error');
      return;
    }
    if (!Number.isInteger(epochs) || epochs < 1) {
      message('train-message', 'Epochs must be a whole number of at least 1.', 'error');
      return;
    }
    let config = {};
    const extra = $('train-config').value.trim();
    if (extra) {
      try {
        config = JSON.parse(extra);
      } catch (e) {
        message('train-message', `More hyperparameters: not valid JSON (${e.message}).`, 'error');
        return;
      }
      if (!config || typeof config !== 'object' || Array.isArray(config)) {
        message('train-message', 'More hyperparameters: give a JSON object, e.g. {"patience": 10}.', 'error');
        return;
      }
    }
    const body = { dataset: { path }, promote: $('train-promote').value, config: Object.assign({}, config, { epochs }) };
    const name = $('train-name').value.trim();
    if (name) body.name = name;
    const button = $('train-start');
    button.disabled = true;
    try {
      const job = await api('/train', {
        method: 'POST', admin: true, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      state.jobId = job.id;
      state.jobStates.set(job.id, job.state);
      message('train-message', `Started job ${job.id}: ${job.name} on ${job.dataset}.`, 'ok');
      await pollJobs();
    } catch (e) {
      adminFailed(e, 'Starting the job');
    } finally {
      button.disabled = false;
    }
  }

  async function cancelJob() {
    if (!adminToken) {
      message('train-message', NO_TOKEN, 'error');
      return;
    }
    const id = state.jobId;
    if (!id) return;
    try {
      await api(`/train/${enc(id)}`, { method: 'DELETE', admin: true });
      message('train-message', `Cancelling job ${id} (it stops within one batch).`, 'ok');
      await pollJobs();
    } catch (e) {
      adminFailed(e, 'Cancelling the job');
    }
  }

  // ---- image models: samples and the spectrum ------------------------------------------------

  async function drawSamples(ev) {
    if (ev) ev.preventDefault();
    const c = state.card;
    if (!c) return;
    const n = Number($('sample-n').value);
    const seed = Number($('sample-seed').value);
    const temperature = Number($('sample-temperature').value);
    if (!Number.isInteger(n) || n < 1 || n > 64 || !Number.isInteger(seed) || seed < 0 || !(temperature > 0)) {
      message('sample-message', 'Count must be 1 to 64, seed a whole number ≥ 0, temperature > 0.', 'error');
      return;
    }
    try {
      // Fetched, not an <img src>: a refusal then shows its JSON error instead of a broken image.
      const q = new URLSearchParams({ n: String(n), seed: String(seed), temperature: String(temperature), format: 'png' });
      const blob = await api(`/models/${enc(c.name)}/sample?${q}`, { as: 'blob' });
      if (state.sampleUrl) URL.revokeObjectURL(state.sampleUrl);
      state.sampleUrl = URL.createObjectURL(blob);
      const img = $('sample-img');
      img.src = state.sampleUrl;
      img.dataset.seed = String(seed);
      img.dataset.temperature = String(temperature);
      message('sample-message', `${n} samples of ${c.name} v${c.version}, seed ${seed}, temperature ${temperature}: the same seed gives the same images.`);
    } catch (e) {
      message('sample-message', e.message, 'error');
    }
  }

  async function loadSpectrum() {
    const c = state.card;
    const r = await api(`/models/${enc(c.name)}/spectrum`);
    const sorted = [...r.log_scales].sort((a, b) => b - a);
    Charts.line($('chart-spectrum'), {
      label: 'sorted scaling spectrum',
      xTitle: 'rank, largest first (features)',
      yTitle: 'log-scale s_d (unitless)',
      xInteger: true,
      series: [{ name: 'log-scale', points: sorted.map((v, i) => [i + 1, v]) }],
    });
    const [rows, cols] = r.shape;
    Charts.heatmap($('chart-spectrum-map'), {
      label: 'scaling spectrum per pixel',
      rows, cols, values: r.log_scales,
      xTitle: 'pixel column (index)', yTitle: 'pixel row (index)', colorTitle: 'log-scale s_d (unitless)', maxSize: 280,
    });
  }

  // ---- score a file ---------------------------------------------------------------------------

  const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

  // CSV of numbers; a first line with any non-number is taken as the header.
  function parseCsv(text) {
    const rows = [];
    let header = null;
    const lines = text.split(/\r\n|\n|\r/);
    for (let i = 0; i < lines.length; i++) {
      if (!lines[i].trim()) continue;
      const cells = lines[i].split(',').map((s) => s.trim().replace(/^"(.*)"$/, '$1').trim());
      const bad = cells.findIndex((s) => !NUMBER.test(s));
      if (bad >= 0 && !rows.length && !header) {
        header = cells;
        continue;
      }
      if (bad >= 0) throw new Error(`line ${i + 1}, column ${bad + 1}: "${cells[bad]}" is not a number`);
      if (rows.length && cells.length !== rows[0].length) {
        throw new Error(`line ${i + 1} has ${cells.length} values, the first row ${rows[0].length}`);
      }
      rows.push(cells.map(Number));
    }
    if (!rows.length) throw new Error('the file has no rows of numbers');
    if (header && header.length !== rows[0].length) {
      throw new Error(`the header names ${header.length} columns, the rows have ${rows[0].length}`);
    }
    return { header, rows };
  }

  // NPY (float32 or float64, [n, d]), read only to show the flagged rows' explanations; the file
  // itself goes to /score unchanged.
  function parseNpy(buffer) {
    const bytes = new Uint8Array(buffer);
    const magic = String.fromCharCode(...bytes.subarray(1, 6));
    if (bytes[0] !== 0x93 || magic !== 'NUMPY') throw new Error('not an NPY file');
    const view = new DataView(buffer);
    const v1 = bytes[6] === 1;
    const headerLen = v1 ? view.getUint16(8, true) : view.getUint32(8, true);
    const start = v1 ? 10 : 12;
    const header = new TextDecoder('latin1').decode(bytes.subarray(start, start + headerLen));
    const descr = (/'descr':\s*'([^']+)'/.exec(header) || [])[1];
    const fortran = /'fortran_order':\s*True/.test(header);
    const shape = ((/'shape':\s*\(([^)]*)\)/.exec(header) || [])[1] || '').split(',').filter((s) => s.trim()).map(Number);
    const kinds = { f4: [4, 'getFloat32'], f8: [8, 'getFloat64'] };
    const kind = descr && kinds[descr.slice(1)];
    if (!kind || shape.length < 1 || shape.length > 2) throw new Error(`NPY ${descr} ${JSON.stringify(shape)}: not float32/float64 rows`);
    const [n, d] = shape.length === 2 ? shape : [1, shape[0]];
    const little = descr[0] !== '>';
    const offset = start + headerLen;
    const at = (r, c) => view[kind[1]](offset + kind[0] * (fortran ? c * n + r : r * d + c), little);
    return { header: null, rows: null, n, d, row: (r) => Array.from({ length: d }, (_, c) => at(r, c)) };
  }

  function clearScoreResults() {
    $('score-results').tBodies[0].replaceChildren();
    $('score-explanations').replaceChildren();
    message('score-message', '');
  }

  async function scoreFile(ev) {
    ev.preventDefault();
    const c = state.card;
    const file = $('score-file').files[0];
    if (!c) {
      message('score-message', 'No loaded model is selected.', 'error');
      return;
    }
    if (!file) {
      message('score-message', 'Choose a CSV or NPY file first.', 'error');
      return;
    }
    clearScoreResults();
    message('score-message', `Scoring ${file.name} with ${c.name} v${c.version}…`);
    const button = $('score-submit');
    button.disabled = true;
    try {
      const buffer = await file.arrayBuffer();
      const head = new Uint8Array(buffer.slice(0, 6));
      const npy = head[0] === 0x93 && String.fromCharCode(...head.subarray(1)) === 'NUMPY';
      let data;
      let request;
      if (npy) {
        // Sent as it is; a file the server cannot read comes back as its error.
        try { data = parseNpy(buffer); } catch (_) { data = null; }
        request = { method: 'POST', headers: { 'Content-Type': 'application/x-npy' }, body: buffer };
      } else {
        data = parseCsv(new TextDecoder().decode(buffer));
        data.n = data.rows.length;
        data.d = data.rows[0].length;
        data.row = (r) => data.rows[r];
        request = { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ inputs: data.rows }) };
      }
      const res = await api(`/models/${enc(c.name)}/score`, request);
      const flagged = res.is_anomaly.map((a, i) => (a ? i : -1)).filter((i) => i >= 0);
      renderScores(res, data, file.name);
      message('score-message',
        `${file.name}: ${res.scores.length} rows scored by ${res.model.name} v${res.model.version} (${res.score_kind} scores, ` +
        `threshold ${res.threshold === null ? 'by FDR' : num(res.threshold, 6)}); ${flagged.length} flagged.`, 'ok');
      if (flagged.length && data) {
        const perRow = Math.max(1, c.architecture.dim * (c.input.eight_bit ? 16 : 33));
        const first = flagged.slice(0, Math.max(1, Math.min(5, Math.floor(EXPLAIN_BUDGET / perRow))));
        await explainRows(first, data);
      }
    } catch (e) {
      message('score-message', e.message, 'error');
    } finally {
      button.disabled = false;
    }
  }

  function renderScores(res, data, fileName) {
    const body = $('score-results').tBodies[0];
    const n = Math.min(res.scores.length, SHOW_ROWS);
    const rows = [];
    for (let i = 0; i < n; i++) {
      const tr = document.createElement('tr');
      const p = res.p_value ? res.p_value[i] : null;
      tr.className = 'score-row' + (res.is_anomaly[i] ? ' anomaly' : '');
      tr.id = `score-row-${i}`;
      // The exact numbers the server returned (shortest round-trip form), for checking.
      Object.assign(tr.dataset, {
        row: String(i), score: String(res.scores[i]), pValue: String(p), logProb: String(res.log_prob[i]),
        percentile: String(res.percentile[i]), anomaly: String(res.is_anomaly[i]),
      });
      cell(tr, String(i));
      cell(tr, num(res.scores[i], 6));
      cell(tr, pValue(p));
      cell(tr, num(res.log_prob[i], 6));
      cell(tr, res.is_anomaly[i] ? 'yes' : 'no');
      const top = cell(tr, '', { class: 'top-features wrap' });
      if (data) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'small';
        b.textContent = 'explain';
        b.addEventListener('click', () => explainRows([i], data).catch((e) => message('score-message', e.message, 'error')));
        top.appendChild(b);
      }
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    if (res.scores.length > n) {
      message('score-message', `${fileName}: showing the first ${n} of ${res.scores.length} rows.`);
    }
  }

  async function explainRows(indices, data) {
    const c = state.card;
    const res = await api(`/models/${enc(c.name)}/explain`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ inputs: indices.map((i) => data.row(i)), top_k: 5 }),
    });
    const image = res.shape.length === 2;
    indices.forEach((rowIndex, k) => {
      const attributions = res.attributions[k];
      const top = res.top_features[k];
      const td = document.querySelector(`#score-row-${rowIndex} .top-features`);
      if (td) {
        td.dataset.topFeatures = top.join(',');
        td.textContent = top.map((f) => {
          const name = data.header ? data.header[f] : image ? `(${Math.floor(f / res.shape[1])}, ${f % res.shape[1]})` : `#${f}`;
          return `${name}: ${fixed(attributions[f], 2)}`;
        }).join(', ');
      }
      if (image) {
        const fig = document.createElement('figure');
        const box = document.createElement('div');
        box.className = 'chart';
        box.id = `chart-explain-${rowIndex}`;
        box.dataset.testid = 'chart-explain';
        const cap = document.createElement('figcaption');
        cap.textContent = `Row ${rowIndex}: which pixels make it unlikely (log p ${fixed(res.log_prob[k], 1)} nats).`;
        fig.append(cap, box);
        $('score-explanations').appendChild(fig);
        Charts.heatmap(box, {
          label: `explanation of row ${rowIndex}`,
          rows: res.shape[0], cols: res.shape[1], values: attributions, min: 0,
          xTitle: 'pixel column (index)', yTitle: 'pixel row (index)', colorTitle: 'attribution (nats)', maxSize: 300,
        });
      }
    });
  }

  // ---- the loop -------------------------------------------------------------------------------

  async function poll() {
    const tasks = [['metrics', pollMetrics()], ['drift', pollDrift()], ['jobs', pollJobs()]];
    if (state.polls % MODELS_EVERY === MODELS_EVERY - 1) tasks.push(['models', loadModels()]);
    const results = await Promise.allSettled(tasks.map((t) => t[1]));
    results.forEach((r, i) => setGlobalError(tasks[i][0], r.status === 'rejected' ? r.reason : null));
    state.polls++;
    $('poll-status').textContent = `updated ${new Date().toLocaleTimeString()}`;
    setTimeout(poll, POLL_MS);
  }

  function bind() {
    $('model-select').addEventListener('change', (e) => selectModel(e.target.value));
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const input = $('admin-token');
      const value = input.value;
      input.value = ''; // taken: the field does not keep it
      if (!value) {
        message('train-message', 'Type the admin token first.', 'error');
        return;
      }
      setToken(value);
      message('train-message', 'Token set.', 'ok');
      pollJobs();
    });
    $('token-forget').addEventListener('click', () => {
      setToken(null);
      state.jobs = [];
      state.jobId = null;
      renderJobs();
      message('train-message', 'Token forgotten.', 'ok');
    });
    $('train-form').addEventListener('submit', startTraining);
    $('job-cancel').addEventListener('click', cancelJob);
    $('sample-form').addEventListener('submit', drawSamples);
    $('score-form').addEventListener('submit', scoreFile);
    window.addEventListener('error', (e) => setGlobalError('script', new Error(`script error: ${e.message}`)));
    window.addEventListener('unhandledrejection', (e) => setGlobalError('script', e.reason instanceof Error ? e.reason : new Error(String(e.reason))));
  }

  async function init() {
    bind();
    setToken(null);
    renderJobs();
    drawTraffic();
    try {
      await loadModels();
      setGlobalError('models', null);
    } catch (e) {
      setGlobalError('models', e);
    }
    try {
      await pollDrift();
    } catch (e) {
      setGlobalError('drift', e);
    }
    document.body.dataset.ready = 'true';
    setTimeout(poll, 0);
  }

  init();
})();
