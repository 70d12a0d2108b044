/* AgentStream UI: every page is drawn here from /api/v1 with Preact + htm (no build step).
 *
 * Safety: all event data is rendered as text (Preact escapes it; nothing here uses
 * dangerouslySetInnerHTML or innerHTML), canvas/graph labels are painted, and every href is
 * built by the helpers below from ids (encodeURIComponent) under this origin. */
(function () {
  'use strict';
  const { h, render } = window.preact;
  const { useState, useEffect, useRef, useMemo, useCallback } = window.preactHooks;
  const html = window.htm.bind(h);
  const ROOT = document.body.dataset.root || '';
  const enc = encodeURIComponent;

  // --- URLs (one builder per page) --------------------------------------------------------
  const href = {
    runs: (q) => ROOT + '/runs' + qs(q),
    run: (id, q) => ROOT + '/runs/' + enc(id) + qs(q),
    debug: (id, q) => ROOT + '/runs/' + enc(id) + '/debug' + qs(q),
    event: (id, q) => ROOT + '/events/' + enc(id) + qs(q),
    path: (q) => ROOT + '/path' + qs(q),
    agent: (id) => ROOT + '/agents/' + enc(id),
    dlq: (q) => ROOT + '/deadletters' + qs(q),
  };
  function qs(q) {
    if (!q) return '';
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
    const s = p.toString();
    return s ? '?' + s : '';
  }

  // --- the API ------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }
  async function api(path, q) {
    const r = await fetch(ROOT + '/api/v1' + path + qs(q), { headers: { accept: 'application/json' }, credentials: 'same-origin' });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new ApiError((body && body.error) || (r.status + ' ' + r.statusText), r.status);
    return body;
  }
  function useApi(path, q) {
    const key = path === null ? null : path + qs(q);
    const [state, setState] = useState({ loading: true, data: null, error: null, key: null });
    useEffect(() => {
      if (key === null) return undefined;
      let live = true;
      setState((s) => ({ loading: true, data: s.key === key ? s.data : null, error: null, key }));
      api(path, q).then(
        (data) => live && setState({ loading: false, data, error: null, key }),
        (error) => live && setState({ loading: false, data: null, error, key }),
      );
      return () => { live = false; };
    }, [key]);
    return state;
  }

  // --- navigation -------------------------------------------------------------------------
  let rerender = () => {};
  function navigate(url, replace) {
    if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
    rerender();
    if (!replace) window.scrollTo(0, 0);
  }
  function onLink(e) {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = e.currentTarget;
    if (a.origin !== location.origin) return;
    e.preventDefault();
    navigate(a.pathname + a.search);
  }
  const A = ({ to, children, cls, title }) => html`<a href=${to} class=${cls} title=${title} onClick=${onLink}>${children}</a>`;
  const query = () => Object.fromEntries(new URLSearchParams(location.search));
  function setQuery(patch, replace) {
    const q = Object.assign(query(), patch);
    navigate(location.pathname + qs(q), replace !== false);
  }

  // --- formatting -----------------------------------------------------------------------------
  const pad = (n, w) => String(n).padStart(w || 2, '0');
  function fmtTime(us) {
    if (us === null || us === undefined) return '';
    const d = new Date(us / 1000);
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
      pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds()) + '.' + pad(d.getUTCMilliseconds(), 3);
  }
  function fmtDur(ms) {
    if (ms === null || ms === undefined) return '';
    if (ms < 0) return '−' + fmtDur(-ms);
    if (ms < 1000) return Math.round(ms) + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + Math.round(s - m * 60) + 's';
    return Math.floor(m / 60) + 'h ' + (m % 60) + 'm';
  }
  // 12,345 (at most 3 decimals), as toLocaleString('en-US') writes it, without Intl: in
  // Chromium every toLocaleString call builds a formatter (~0.4 ms: 100 ms for the runs
  // list's 250 numbers) and the first one loads ICU's locale data (20-60 ms at page load)
  function fmtInt(n) {
    if (n === null || n === undefined) return '';
    const x = Math.round(Number(n) * 1000) / 1000;
    if (!Number.isFinite(x) || Math.abs(x) >= 1e21) return String(x);
    const [whole, frac] = String(Math.abs(x)).split('.');
    return (x < 0 ? '-' : '') + whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',') + (frac ? '.' + frac : '');
  }
  const fmtCost = (c) => (c === null || c === undefined ? '' : '$' + Number(c).toFixed(4));
  const pct = (r) => (r === null || r === undefined ? '–' : Math.round(r * 100) + '%');
  const shortId = (id) => (id && id.length > 13 ? id.slice(0, 8) + '…' + id.slice(-4) : id);
  const kindOf = (type) => { const base = (type || '').replace(/\.v\d+$/, ''); return base.slice(base.lastIndexOf('.') + 1); };
  const Badge = ({ s }) => (s ? html`<span class=${'badge st-' + s}>${s}</span>` : null);
  const Err = ({ error }) => html`<p class="error">${error.message || String(error)}</p>`;
  const isUuid = (s) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);

  // --- pages of other scripts (live.js, dashboards.js, sql.js, memory.js), loaded before this
  // one: each pushed a factory that gets these helpers and returns {nav, route(seg)} ---------
  const kit = { h, html, useState, useEffect, useRef, useMemo, useCallback, A, api, useApi, href, qs, navigate, query,
    setQuery: (patch, replace) => setQuery(patch, replace), ApiError, fmtTime, fmtDur, fmtInt, fmtCost, pct, shortId, Badge, Err, ROOT, enc };
  const extraPages = (window.AgentStreamPages || []).map((make) => make(kit));

  // --- a JSON value as a tree of text (payloads, states) ---------------------------------------
  function Scalar({ v }) {
    if (v === null || v === undefined) return html`<span class="z">null</span>`;
    if (typeof v === 'string') return html`<span class="s">"${v}"</span>`;
    if (typeof v === 'number') return html`<span class="n">${String(v)}</span>`;
    if (typeof v === 'boolean') return html`<span class="b">${String(v)}</span>`;
    return html`<span class="s">${JSON.stringify(v)}</span>`;
  }
  const isObj = (v) => v !== null && typeof v === 'object';
  const Val = (v, none) => (v === null || v === undefined ? none : isObj(v) ? html`<div class="tree"><${Tree} value=${v} collapsed=${true} depth=${0} /></div>` : html`<${Scalar} v=${v} />`);
  const size = (v) => (Array.isArray(v) ? v.length : Object.keys(v).length);
  const short = (v) => { const s = isObj(v) ? JSON.stringify(v) : String(v); return s.length > 140 ? s.slice(0, 139) + '…' : s; };

  /* diff: {keyed, changes} from a debugger step; path rules are the CLI's state_diff rules */
  function childPath(parent, key, diff) {
    if (!parent) return String(key);
    if (diff && diff.keyed.includes(parent)) return parent + '[' + key + ']';
    return parent + '.' + key;
  }
  function touched(path, diff) {
    if (!diff || !path) return false;
    if (path in diff.changes) return true;
    for (const k in diff.changes) if (k.startsWith(path + '.') || k.startsWith(path + '[')) return true;
    return false;
  }
  function removedUnder(path, value, diff) {
    if (!diff) return [];
    const out = [];
    for (const [k, c] of Object.entries(diff.changes)) {
      if (c.after !== null || c.before === null) continue;
      let key = null;
      if (path && diff.keyed.includes(path) && k.startsWith(path + '[') && k.endsWith(']')) key = k.slice(path.length + 1, -1);
      else if (path && k.startsWith(path + '.') && !/[.[]/.test(k.slice(path.length + 1))) key = k.slice(path.length + 1);
      else if (!path && !/[.[]/.test(k)) key = k;
      if (key !== null && !(key in value)) out.push([key, c.before]);
    }
    return out;
  }
  function Tree({ value, name, path, diff, depth, collapsed }) {
    depth = depth || 0;
    path = path || '';
    const ch = touched(path, diff);
    const change = diff && path in diff.changes ? diff.changes[path] : null;
    const label = name !== undefined ? html`<span class="k">${name}</span>: ` : null;
    if (!isObj(value) || (Array.isArray(value) && value.length === 0) || (!Array.isArray(value) && size(value) === 0 && !removedUnder(path, value, diff).length)) {
      const cls = 'leaf' + (ch ? ' changed' : '') + (change && change.before === null ? ' added' : '');
      return html`<div class=${cls} data-path=${path}>${label}${change && change.before !== null ? html`<span class="was">${short(change.before)}</span>` : null}<${Scalar} v=${isObj(value) ? (Array.isArray(value) ? [] : {}) : value} /></div>`;
    }
    const initial = Boolean((ch && diff) || (!collapsed && depth < 2) || depth === 0 || (collapsed && depth === 1 && size(value) <= 4));
    return html`<${Branch} value=${value} label=${label} path=${path} diff=${diff} depth=${depth} collapsed=${collapsed} changed=${ch} change=${change} initial=${initial} />`;
  }
  const SHOW = 200;  // children rendered per node before "show more"
  function Branch({ value, label, path, diff, depth, collapsed, changed, change, initial }) {
    const [open, setOpen] = useState(initial);
    const [limit, setLimit] = useState(SHOW);
    useEffect(() => { if (initial) setOpen(true); }, [initial, path]);
    const arr = Array.isArray(value);
    const listChanged = arr && change;
    let body = null;
    if (open) {  // children exist only while open: big states stay cheap to render
      const entries = arr ? value.map((v, i) => [i, v]) : Object.entries(value);
      const removed = arr ? [] : removedUnder(path, value, diff);
      body = html`<div class="node">
        ${entries.slice(0, limit).map(([k, v]) => html`<${Tree} key=${k} name=${String(k)} value=${v} path=${arr ? path + '[' + k + ']' : childPath(path, k, diff)} diff=${arr ? null : diff} depth=${depth + 1} collapsed=${collapsed} />`)}
        ${entries.length > limit ? html`<div><a href="#" onClick=${(e) => { e.preventDefault(); setLimit(limit + SHOW * 5); }}>… ${entries.length - limit} more</a></div>` : null}
        ${removed.map(([k, v]) => html`<div class="leaf removed" data-path=${childPath(path, k, diff)}><span class="k">${k}</span>: ${short(v)}</div>`)}
      </div>`;
    }
    return html`<details open=${open} onToggle=${(e) => setOpen(e.currentTarget.open)} class=${changed ? 'changed' : ''} data-path=${path}>
      <summary>${label}<span class="count">${arr ? '[' + value.length + ']' : '{' + size(value) + '}'}</span>${listChanged ? html` <span class="was">${short(change.before)}</span>` : null}</summary>
      ${body}
    </details>`;
  }

  // --- layout -------------------------------------------------------------------------------
  function Header({ page }) {
    const [q, setQ] = useState('');
    const go = (e) => {
      e.preventDefault();
      const v = q.trim();
      if (!v) return;
      if (isUuid(v)) navigate(href.event(v));
      else if (/^run/i.test(v)) navigate(href.run(v));
      else navigate(href.agent(v));
    };
    return html`<header class="top">
      <${A} to=${href.runs()} cls="brand">AgentStream<//>
      <nav>
        ${extraPages.filter((p) => p.nav && p.nav.first).map((p) => html`<${A} to=${ROOT + p.nav.path} cls=${page === p.nav.key ? 'active' : ''}>${p.nav.label}<//>`)}
        <${A} to=${href.runs()} cls=${page === 'runs' ? 'active' : ''}>Runs<//>
        <${A} to=${href.dlq()} cls=${page === 'dlq' ? 'active' : ''}>Dead letters<//>
        ${extraPages.filter((p) => p.nav && !p.nav.first).map((p) => html`<${A} to=${ROOT + p.nav.path} cls=${page === p.nav.key ? 'active' : ''}>${p.nav.label}<//>`)}
        <a href=${ROOT + '/api/v1/docs'}>API</a>
      </nav>
      <form onSubmit=${go}><input placeholder="Go to a run id, event id or agent id" value=${q} onInput=${(e) => setQ(e.target.value)} aria-label="go to id" /></form>
    </header>`;
  }

  // --- 1. runs ------------------------------------------------------------------------------
  const RUN_COLS = [
    ['run_id', 'Run'], ['goal', 'Goal'], ['status', 'Status'], ['agents', 'Agents'], ['started', 'Started', 'started'],
    ['duration', 'Duration', 'duration', 1], ['events', 'Events', 'events', 1], ['actions', 'Actions', 'actions', 1],
    ['errors', 'Errors', 'errors', 1], ['violations', 'Violations', 'violations', 1], ['tokens', 'Tokens', 'tokens', 1], ['cost', 'Cost', 'cost', 1],
  ];
  function RunsPage() {
    const q = query();
    const limit = Number(q.limit || 50);
    const offset = Number(q.offset || 0);
    const desc = q.desc !== 'false';
    const sort = q.sort || 'started';
    const params = { agent: q.agent, status: q.status, tenant: q.tenant, goal: q.goal, since: q.since, until: q.until, sort, desc, limit, offset };
    const res = useApi('/runs', params);
    const facets = useApi('/runs/facets', {});
    const [form, setForm] = useState({ agent: q.agent || '', status: q.status || '', tenant: q.tenant || '', goal: q.goal || '', since: q.since || '', until: q.until || '' });
    const apply = (e) => { e.preventDefault(); setQuery(Object.assign({}, form, { offset: 0 }), false); };
    const field = (k) => ({ value: form[k], onInput: (e) => setForm(Object.assign({}, form, { [k]: e.target.value })) });
    const f = facets.data || { statuses: [], tenants: [], agents: [] };
    const sortBy = (key) => setQuery({ sort: key, desc: key === sort ? String(!desc) : 'true', offset: 0 }, false);
    const d = res.data;
    return html`<main>
      <h1>Runs</h1>
      <form class="bar" onSubmit=${apply}>
        <label>Agent <select name="agent" ...${field('agent')}><option value="">any</option>${f.agents.map((a) => html`<option value=${a}>${a}</option>`)}</select></label>
        <label>Status <select name="status" ...${field('status')}><option value="">any</option>${f.statuses.map((a) => html`<option value=${a}>${a}</option>`)}</select></label>
        <label>Tenant <select name="tenant" ...${field('tenant')}><option value="">any</option>${f.tenants.map((a) => html`<option value=${a}>${a}</option>`)}</select></label>
        <label>Goal <input name="goal" placeholder="text in goal" ...${field('goal')} /></label>
        <label>From (UTC) <input name="since" type="datetime-local" step="1" ...${field('since')} /></label>
        <label>To (UTC) <input name="until" type="datetime-local" step="1" ...${field('until')} /></label>
        <button class="primary" type="submit">Filter</button>
        <${A} to=${href.runs()}>clear<//>
      </form>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${d ? html`<div class="pager" data-total=${d.total}>
          <span>${d.total === 0 ? 'no runs' : (d.offset + 1) + '–' + (d.offset + d.runs.length) + ' of ' + fmtInt(d.total) + ' runs'}</span>
          <button disabled=${d.offset === 0} onClick=${() => setQuery({ offset: Math.max(0, d.offset - limit) }, false)}>‹ Prev</button>
          <button disabled=${d.offset + d.runs.length >= d.total} onClick=${() => setQuery({ offset: d.offset + limit }, false)}>Next ›</button>
          ${res.loading ? html`<span class="loading">loading…</span>` : null}
        </div>
        <div class="panel"><table class="grid runs">
          <thead><tr>${RUN_COLS.map(([k, label, s, num]) => html`<th class=${(s ? 'sort ' : '') + (num ? 'num ' : '') + (s === sort ? 'sorted' : '')} onClick=${s ? () => sortBy(s) : null}>${label}${s === sort ? (desc ? ' ↓' : ' ↑') : ''}</th>`)}</tr></thead>
          <tbody>${d.runs.map((r) => html`<tr data-run=${r.run_id}>
            <td><${A} to=${href.run(r.run_id)} cls="mono">${r.run_id}<//></td>
            <td class="goal">${r.goal}</td>
            <td><${Badge} s=${r.status} /></td>
            <td>${r.agents.map((a, i) => html`${i ? ', ' : ''}<${A} to=${href.agent(a)}>${a}<//>`)}</td>
            <td class="mono">${fmtTime(r.started_us)}</td>
            <td class="num">${fmtDur(r.duration_ms)}</td>
            <td class="num" data-col="events">${fmtInt(r.events)}</td>
            <td class="num" data-col="actions">${fmtInt(r.actions)}</td>
            <td class="num" data-col="errors">${r.errors ? html`<span class="badge st-error">${fmtInt(r.errors)}</span>` : '0'}</td>
            <td class="num" data-col="violations">${r.violations ? html`<span class="badge st-mismatch">${fmtInt(r.violations)}</span>` : '0'}</td>
            <td class="num">${fmtInt(r.tokens)}</td>
            <td class="num">${fmtCost(r.cost_usd)}</td>
          </tr>`)}</tbody>
        </table></div>` : res.loading ? html`<p class="loading">loading runs…</p>` : null}
    </main>`;
  }

  // --- 2. run page: timeline, list, inspector ------------------------------------------------
  const LANE_H = 30, AXIS_H = 24;
  const CAT_COLOR = { think: '#3b82f6', learn: '#16a34a', lifecycle: '#7b8494', act: '#ea8a1a' };
  const BAR_COLOR = { ok: '#1f9d55', error: '#d3343d', mismatch: '#c77c02', open: '#8a63d2', orphan: '#7b8494' };

  function Timeline({ tl, selected, onSelect }) {
    const canvasRef = useRef(null);
    const boxRef = useRef(null);
    const view = useRef(null);
    const hits = useRef([]);
    const lanes = tl.lanes;
    const laneOf = useMemo(() => Object.fromEntries(lanes.map((a, i) => [a, i])), [tl]);
    const span = Math.max(1, tl.end - tl.start);
    if (view.current === null || view.current.tl !== tl) view.current = { tl, t0: tl.start - span * 0.01, t1: tl.end + span * 0.01 };

    const draw = useCallback(() => {
      const cv = canvasRef.current;
      if (!cv) return;
      const started = performance.now();
      const dpr = window.devicePixelRatio || 1;
      const W = cv.clientWidth, H = AXIS_H + lanes.length * LANE_H;
      if (cv.width !== Math.round(W * dpr) || cv.height !== Math.round(H * dpr)) { cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr); }
      const g = cv.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, W, H);
      const { t0, t1 } = view.current;
      const x = (t) => ((t - t0) / (t1 - t0)) * W;
      const inView = (a, b) => b >= t0 && a <= t1;
      const laneY = (agent) => AXIS_H + laneOf[agent] * LANE_H;
      const found = [];
      // lanes and axis
      g.fillStyle = '#fafbfc'; g.fillRect(0, 0, W, AXIS_H);
      for (let i = 0; i < lanes.length; i++) {
        g.fillStyle = i % 2 ? '#fbfcfd' : '#ffffff'; g.fillRect(0, AXIS_H + i * LANE_H, W, LANE_H);
      }
      g.strokeStyle = '#e3e6eb'; g.beginPath(); g.moveTo(0, AXIS_H - 0.5); g.lineTo(W, AXIS_H - 0.5); g.stroke();
      const ticks = 8, stepT = (t1 - t0) / ticks;
      g.fillStyle = '#6b7485'; g.font = '11px system-ui, sans-serif'; g.textBaseline = 'middle';
      for (let i = 0; i <= ticks; i++) {
        const t = t0 + i * stepT, px = x(t);
        g.fillRect(px, AXIS_H - 5, 1, 5);
        g.fillText((t < tl.start ? '' : '+') + fmtDur((t - tl.start) / 1000), px + 3, AXIS_H / 2);
      }
      // messages: sender lane -> recipient lane
      g.strokeStyle = '#9aa3b5'; g.lineWidth = 1;
      let msgs = 0;
      for (const m of tl.messages) {
        if (!(m.to in laneOf) || !inView(m.t, m.t)) continue;
        msgs++;
        const px = x(m.t), y0 = laneY(m.from) + LANE_H / 2, y1 = laneY(m.to) + LANE_H / 2;
        g.beginPath(); g.moveTo(px, y0); g.lineTo(px, y1); g.stroke();
        const dir = y1 > y0 ? 1 : -1;
        g.beginPath(); g.moveTo(px, y1); g.lineTo(px - 3, y1 - 5 * dir); g.lineTo(px + 3, y1 - 5 * dir); g.closePath(); g.fillStyle = '#9aa3b5'; g.fill();
      }
      // action bars, coloured by status
      let painted = 0;
      const tEnd = tl.end, counts = {};
      for (const b of tl.bars) {
        const end = b.end === null ? tEnd : b.end;
        if (!inView(b.start, end)) continue;
        const x0 = x(b.start), w = Math.max(3, x(end) - x0), y = laneY(b.agent) + 7;
        g.fillStyle = BAR_COLOR[b.status] || '#888';
        g.globalAlpha = b.status === 'open' ? 0.55 : 0.9;
        g.fillRect(x0, y, w, LANE_H - 14);
        g.globalAlpha = 1;
        const sel = selected && (b.started === selected || b.completed === selected);
        if (sel) { g.strokeStyle = '#1d2430'; g.lineWidth = 2; g.strokeRect(x0 - 1, y - 1, w + 2, LANE_H - 12); g.lineWidth = 1; }
        if (w > 46) { g.fillStyle = '#fff'; g.font = '10px system-ui, sans-serif'; g.fillText(String(b.tool || ''), x0 + 3, y + (LANE_H - 14) / 2, w - 6); }
        found.push({ x0, x1: x0 + w, y0: y, y1: y + LANE_H - 14, id: b.completed || b.started, bar: true });
        counts[b.status] = (counts[b.status] || 0) + 1;
        painted++;
      }
      // marks: every event that is not an action start/completion; flags on violations
      let marks = 0, flagged = 0;
      for (const e of tl.events) {
        if (!inView(e.t, e.t)) continue;
        const isAct = e.category === 'act' && (e.kind === 'started' || e.kind === 'completed');
        const px = x(e.t), yc = laneY(e.agent) + LANE_H / 2;
        if (!isAct) {
          g.fillStyle = CAT_COLOR[e.category] || '#888';
          g.beginPath();
          if (e.category === 'learn') { g.moveTo(px, yc - 5); g.lineTo(px + 5, yc); g.lineTo(px, yc + 5); g.lineTo(px - 5, yc); g.closePath(); }
          else if (e.kind === 'message') { g.rect(px - 2, yc - 2, 4, 4); }
          else g.arc(px, yc, e.category === 'lifecycle' ? 3 : 4, 0, Math.PI * 2);
          g.fill();
          if (e.id === selected) { g.strokeStyle = '#1d2430'; g.lineWidth = 2; g.beginPath(); g.arc(px, yc, 7, 0, Math.PI * 2); g.stroke(); g.lineWidth = 1; }
          found.push({ x0: px - 5, x1: px + 5, y0: yc - 6, y1: yc + 6, id: e.id });
          marks++;
        }
        if (e.violations) {
          const yf = laneY(e.agent) + 1;
          g.fillStyle = '#d3343d';
          g.beginPath(); g.moveTo(px, yf + 7); g.lineTo(px - 4, yf); g.lineTo(px + 4, yf); g.closePath(); g.fill();
          found.push({ x0: px - 5, x1: px + 5, y0: yf, y1: yf + 8, id: e.id });
          flagged++;
        }
      }
      // what was drawn (what is in view), for the tests and the bench
      const ds = cv.dataset;
      ds.marksPainted = String(marks); ds.flagsPainted = String(flagged); ds.messagesPainted = String(msgs);
      ds.barsByStatus = Object.keys(counts).sort().map((k) => k + ':' + counts[k]).join(' ');
      hits.current = found;
      cv.dataset.barsPainted = String(painted);
      cv.dataset.drawMs = (performance.now() - started).toFixed(1);  // read by bench/bench_ui.py
    }, [tl, selected]);

    useEffect(() => {  // observing reports the box at once: that is the first draw
      const ro = new ResizeObserver(() => draw());
      ro.observe(boxRef.current);
      return () => ro.disconnect();
    }, [draw]);

    const onWheel = (e) => {
      e.preventDefault();
      const cv = canvasRef.current, r = cv.getBoundingClientRect();
      const f = (e.clientX - r.left) / r.width;
      const { t0, t1 } = view.current, w = t1 - t0;
      if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
        const d = ((e.deltaX || e.deltaY) / r.width) * w;
        view.current.t0 += d; view.current.t1 += d;
      } else {
        const k = Math.exp(e.deltaY * 0.0015), nw = Math.max(1000, w * k), at = t0 + f * w;
        view.current.t0 = at - f * nw; view.current.t1 = at + (1 - f) * nw;
      }
      requestAnimationFrame(draw);
    };
    const drag = useRef(null);
    const onDown = (e) => { drag.current = { x: e.clientX, t0: view.current.t0, t1: view.current.t1, moved: false }; };
    const onMove = (e) => {
      if (!drag.current) return;
      const dx = e.clientX - drag.current.x;
      if (Math.abs(dx) > 3) drag.current.moved = true;
      if (!drag.current.moved) return;
      const w = drag.current.t1 - drag.current.t0, dt = (-dx / canvasRef.current.clientWidth) * w;
      view.current.t0 = drag.current.t0 + dt; view.current.t1 = drag.current.t1 + dt;
      requestAnimationFrame(draw);
    };
    const onUp = (e) => {
      const d = drag.current; drag.current = null;
      if (d && d.moved) return;
      const r = canvasRef.current.getBoundingClientRect();
      const px = e.clientX - r.left, py = e.clientY - r.top;
      let best = null;
      for (const h2 of hits.current) {
        if (px >= h2.x0 - 2 && px <= h2.x1 + 2 && py >= h2.y0 - 2 && py <= h2.y1 + 2) { if (!best || !h2.bar) best = h2; }
      }
      if (best) onSelect(best.id);
    };
    const fit = () => { view.current = { tl, t0: tl.start - span * 0.01, t1: tl.end + span * 0.01 }; draw(); };
    const zoom = (k) => { const { t0, t1 } = view.current, c = (t0 + t1) / 2, w = (t1 - t0) * k; view.current.t0 = c - w / 2; view.current.t1 = c + w / 2; draw(); };
    return html`<div>
      <div class="legend">
        <span><i class="sw-ok"></i>ok</span><span><i class="sw-err"></i>error</span><span><i class="sw-mis"></i>mismatch</span><span><i class="sw-open"></i>open</span>
        <span><i class="dot sw-think"></i>think</span><span><i class="dot sw-learn"></i>learn</span><span><i class="dot sw-life"></i>lifecycle</span>
        <span><i class="sw-msg"></i>message</span><span><i class="sw-vio"></i>▼ violation</span>
        <span style="margin-left:auto">wheel: zoom · drag / shift+wheel: pan</span>
        <button onClick=${() => zoom(0.5)}>+</button><button onClick=${() => zoom(2)}>−</button><button onClick=${fit}>fit</button>
      </div>
      <div class="panel timeline" ref=${boxRef}>
        <div class="labels"><div class="axis-pad"></div>${lanes.map((a) => html`<div class="lane-label" data-lane=${a}><${A} to=${href.agent(a)}>${a}<//></div>`)}</div>
        <canvas ref=${canvasRef} style=${{ height: AXIS_H + lanes.length * LANE_H + 'px' }} data-lanes=${lanes.length} data-bars=${tl.bars.length}
          onWheel=${onWheel} onMouseDown=${onDown} onMouseMove=${onMove} onMouseUp=${onUp} onMouseLeave=${() => { drag.current = null; }} aria-label="run timeline"></canvas>
      </div>
    </div>`;
  }

  const ROW_H = 24;
  function EventList({ tl, selected, onSelect }) {
    const [filter, setFilter] = useState('all');
    const [top, setTop] = useState(0);
    const box = useRef(null);
    const rows = useMemo(() => tl.events.filter((e) => filter === 'all' || (filter === 'failures' ? (e.status === 'error' || e.status === 'failed' || e.violations) : e.category === filter)), [tl, filter]);
    useEffect(() => {
      if (!selected || !box.current) return;
      const i = rows.findIndex((e) => e.id === selected);
      if (i >= 0) {
        const y = (i + 1) * ROW_H, el = box.current;
        if (y < el.scrollTop || y > el.scrollTop + el.clientHeight - ROW_H) el.scrollTop = Math.max(0, y - el.clientHeight / 2);
      }
    }, [selected, rows]);
    const height = 560;
    const first = Math.max(0, Math.floor(top / ROW_H) - 10);
    const last = Math.min(rows.length, first + Math.ceil(height / ROW_H) + 20);
    return html`<div>
      <div class="chips">${['all', 'think', 'act', 'learn', 'lifecycle', 'failures'].map((k) => html`<a href="#" class=${filter === k ? 'on' : ''} onClick=${(e) => { e.preventDefault(); setFilter(k); }}>${k}</a>`)}
        <span class="dim" data-count=${rows.length}>${fmtInt(rows.length)} events</span></div>
      <div class="panel vlist" ref=${box} onScroll=${(e) => setTop(e.target.scrollTop)}>
        <div class="row head" style=${{ top: '0px' }}><span>time</span><span>+</span><span>agent</span><span>type</span><span>status</span><span>summary</span></div>
        <div style=${{ height: (rows.length + 1) * ROW_H + 'px' }}></div>
        ${rows.slice(first, last).map((e, i) => html`<div key=${e.id} class=${'row' + (e.id === selected ? ' sel' : '')} style=${{ top: (first + i + 1) * ROW_H + 'px' }} onClick=${() => onSelect(e.id)} data-id=${e.id}>
          <span class="mono">${fmtTime(e.t)}</span><span class="dim">${fmtDur((e.t - tl.start) / 1000)}</span><span>${e.agent}</span>
          <span>${e.kind}${e.tool ? ' · ' + e.tool : ''}</span><span>${e.status ? html`<${Badge} s=${e.status} />` : ''}${e.violations ? html` <span class="badge st-error">violation</span>` : ''}</span><span>${e.summary}</span></div>`)}
      </div></div>`;
  }

  function Inspector({ id, runId, inRun, onSelect }) {
    const res = useApi('/events/' + enc(id), {});
    const e = res.data;
    const ref = (x) => {
      const o = inRun(x);
      return o ? html`<a href=${href.run(runId, { event: x })} onClick=${(ev) => { ev.preventDefault(); onSelect(x); }} class="mono">${shortId(x)}</a> <span class="dim">${o.agent} · ${o.kind}${o.status ? ' · ' + o.status : ''}</span>`
        : html`<${A} to=${href.event(x)} cls="mono">${shortId(x)}<//> <span class="dim">outside this run</span>`;
    };
    return html`<aside class="panel inspector" data-event=${id}>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${!e ? html`<p class="loading">loading event…</p>` : html`
        <h2>${kindOf(e.type)} <span class="tag">${e.type}</span></h2>
        <div class="links">
          <${A} to=${href.event(e.id, { mode: 'why' })}>why?<//><${A} to=${href.event(e.id, { mode: 'impact' })}>impact<//>
          ${e.run_id ? html`<${A} to=${href.debug(e.run_id, { event: e.id })}>step through here<//>` : null}
        </div>
        <h3>Envelope</h3>
        <dl class="kv">
          <dt>id</dt><dd class="mono">${e.id}</dd>
          <dt>time</dt><dd class="mono">${e.time}</dd>
          <dt>agent</dt><dd><${A} to=${href.agent(e.agent_id)}>${e.agent_id}<//></dd>
          <dt>run</dt><dd>${e.run_id ? html`<${A} to=${href.run(e.run_id)}>${e.run_id}<//>` : '–'}</dd>
          <dt>task</dt><dd>${e.task_id || '–'}</dd>
          <dt>tenant</dt><dd>${e.tenant}</dd>
          <dt>source</dt><dd>${e.source}</dd>
          ${e.traceparent ? html`<dt>traceparent</dt><dd class="mono">${e.traceparent}</dd>` : null}
          <dt>log</dt><dd class="mono">${e.log_partition === null ? '–' : 'p' + e.log_partition + '@' + e.log_offset}</dd>
        </dl>
        <h3>Causes (${e.causes.length})</h3>
        <ul class="ids">${e.causes.map((c) => html`<li>${ref(c)}</li>`)}</ul>
        <h3>Effects in this run (${e.effects.length})</h3>
        <ul class="ids">${e.effects.map((c) => html`<li>${ref(c)}</li>`)}</ul>
        ${e.violations.length ? html`<h3>Violations</h3>${e.violations.map((v) => html`<div class="error"><b>${v.category}</b> ${v.detail}${v.expected || v.actual ? html`<br />expected <code>${v.expected}</code>, actual <code>${v.actual}</code>` : null}</div>`)}` : null}
        <h3>Payload</h3>
        <div class="tree"><${Tree} value=${e.payload} /></div>
        <h3>Summary</h3><p class="wrap">${e.summary}</p>`}
    </aside>`;
  }

  const VIOLATIONS_SHOWN = 100;  // rows drawn before "show all": a table lays out every row
  function RunViolations({ violations, runId, onSelect }) {
    const [all, setAll] = useState(false);
    if (!violations.length) return null;
    const rows = all ? violations : violations.slice(0, VIOLATIONS_SHOWN);
    return html`<h2>Violations <span class="dim" data-count=${violations.length}>${rows.length < violations.length ? fmtInt(rows.length) + ' of ' + fmtInt(violations.length) : fmtInt(violations.length)}</span></h2>
      <div class="panel"><table class="grid violations"><thead><tr><th>time</th><th>agent</th><th>category</th><th>detail</th><th>event</th></tr></thead>
      <tbody>${rows.map((v) => html`<tr key=${v.id} data-event=${v.detected_by}><td class="mono">${fmtTime(v.t)}</td><td>${v.agent}</td><td><span class="badge st-error">${v.category}</span></td><td class="wrap">${v.detail}</td>
      <td><a href=${href.run(runId, { event: v.detected_by })} onClick=${(e) => { e.preventDefault(); onSelect(v.detected_by); }} class="mono">${shortId(v.detected_by)}</a></td></tr>`)}</tbody></table>
      ${rows.length < violations.length ? html`<p class="more"><button onClick=${() => setAll(true)}>show all ${fmtInt(violations.length)}</button></p>` : null}</div>`;
  }

  function RunPage({ runId }) {
    const q = query();
    const viewMode = q.view || 'timeline';
    const selected = q.event || null;
    const run = useApi('/runs/' + enc(runId), {});
    const tlRes = useApi('/runs/' + enc(runId) + '/timeline', {});
    const tl = tlRes.data;
    const byId = useMemo(() => new Map(tl ? tl.events.map((e) => [e.id, e]) : []), [tl]);
    const select = (id) => setQuery({ event: id });
    const r = run.data;
    const counts = useMemo(() => {
      if (!tl) return null;
      const c = { ok: 0, error: 0, mismatch: 0, open: 0, orphan: 0 };
      for (const b of tl.bars) c[b.status] = (c[b.status] || 0) + 1;
      return c;
    }, [tl]);
    return html`<main>
      <h1>Run <span class="mono">${runId}</span> ${r ? html`<${Badge} s=${r.status} />` : null}</h1>
      ${r ? html`<div class="stats"><span class="wrap">${r.goal}</span></div>
        <div class="stats">
          <span>started <b>${fmtTime(r.started_us)}</b></span><span>duration <b>${fmtDur(r.duration_ms)}</b></span>
          <span>events <b>${fmtInt(r.events)}</b></span><span>actions <b>${fmtInt(r.actions)}</b></span><span>errors <b>${fmtInt(r.errors)}</b></span>
          <span>mismatches <b>${fmtInt(r.mismatches)}</b></span><span>violations <b>${fmtInt(r.violations)}</b></span>
          <span>tokens <b>${fmtInt(r.tokens)}</b></span><span>cost <b>${fmtCost(r.cost_usd)}</b></span>
          <span>agents ${r.agents.map((a, i) => html`${i ? ', ' : ''}<${A} to=${href.agent(a)}>${a}<//>`)}</span>
        </div>` : run.error ? html`<p class="dim">run summary: ${run.error.message}</p>` : null}
      <div class="bar">
        <button class=${viewMode === 'timeline' ? 'on' : ''} onClick=${() => setQuery({ view: 'timeline' })}>Timeline</button>
        <button class=${viewMode === 'list' ? 'on' : ''} onClick=${() => setQuery({ view: 'list' })}>List</button>
        <${A} to=${href.debug(runId, selected ? { event: selected } : null)}>▶ Step through (debug replay)<//>
        ${tl ? html`<span class="dim">${fmtInt(tl.events.length)} events · ${tl.lanes.length} agents · ${tl.bars.length} tool calls
          (${counts.ok} ok, ${counts.error} error, ${counts.mismatch} mismatch, ${counts.open} open) · ${tl.violations.length} violations
          ${tl.truncated ? html` · <b>showing the first ${fmtInt(tl.limit)}</b>` : null}</span>` : null}
      </div>
      ${tlRes.error ? html`<${Err} error=${tlRes.error} />` : null}
      ${!tl ? (tlRes.loading ? html`<p class="loading">loading timeline…</p>` : null) : html`
      <div class=${'run-layout' + (selected ? '' : ' noinspect')}>
        <div>${viewMode === 'list' ? html`<${EventList} tl=${tl} selected=${selected} onSelect=${select} />` : html`<${Timeline} tl=${tl} selected=${selected} onSelect=${select} />
          <${RunViolations} violations=${tl.violations} runId=${runId} onSelect=${select} />`}</div>
        ${selected ? html`<${Inspector} id=${selected} runId=${runId} inRun=${(x) => byId.get(x)} onSelect=${select} />` : null}
      </div>`}
    </main>`;
  }

  // --- 3. step-through ------------------------------------------------------------------------
  const SPEEDS = [0.5, 1, 2, 4, 8, 16, 32];
  function DebugPage({ runId }) {
    const q = query();
    const source = q.source || 'kafka';
    const idx = useApi('/runs/' + enc(runId) + '/steps', { source });
    const s = idx.data;
    const [pos, setPosRaw] = useState(null);
    const posRef = useRef(null);  // keys may arrive faster than renders: read the latest
    const setPosState = (i) => { posRef.current = i; setPosRaw(i); };
    const [playing, setPlaying] = useState(false);
    const [speed, setSpeed] = useState(2);
    const [msg, setMsg] = useState('');
    const cache = useRef(new Map());
    const [step, setStep] = useState(null);
    const [stepErr, setStepErr] = useState(null);

    useEffect(() => {
      if (!s) return;
      let p = Number(q.step || 0);
      if (q.event) { const i = s.steps.findIndex((x) => x.id === q.event); if (i >= 0) p = i; }
      setPosState(Math.min(Math.max(0, p), s.count - 1));
    }, [s]);
    const fetchStep = (i) => {
      const key = source + ':' + i;
      if (!cache.current.has(key)) cache.current.set(key, api('/runs/' + enc(runId) + '/steps/' + i, { source }));
      return cache.current.get(key);
    };
    useEffect(() => {
      if (pos === null || !s) return;
      let live = true;
      fetchStep(pos).then((st) => { if (live) { setStep(st); setStepErr(null); } }, (e) => live && setStepErr(e));
      if (pos + 1 < s.count) fetchStep(pos + 1);
      history.replaceState(null, '', location.pathname + qs(Object.assign(query(), { step: pos, event: undefined })));
      return () => { live = false; };
    }, [pos, s]);
    const go = useCallback((i, why) => { setMsg(why || ''); setPosState(i); }, []);
    const cmd = useCallback((name) => {
      const pos = posRef.current;
      if (!s || pos === null) return;
      const fails = s.failures;
      if (name !== 'play') setPlaying(false);
      switch (name) {
        case 'next': if (pos < s.count - 1) go(pos + 1); else { setPlaying(false); setMsg('end of the timeline'); } break;
        case 'back': if (pos > 0) go(pos - 1); else setMsg('start of the timeline'); break;
        case 'first': go(0); break;
        case 'last': go(s.count - 1); break;
        case 'nextFail': { const n = fails.find((i) => i > pos); if (n !== undefined) go(n); else setMsg('no failure after this step'); break; }
        case 'prevFail': { const n = [...fails].reverse().find((i) => i < pos); if (n !== undefined) go(n); else setMsg('no failure before this step'); break; }
        case 'play': setPlaying((p) => !p && pos < s.count - 1); break;
        case 'faster': setSpeed((v) => SPEEDS[Math.min(SPEEDS.length - 1, SPEEDS.indexOf(v) + 1)] || v); break;
        case 'slower': setSpeed((v) => SPEEDS[Math.max(0, SPEEDS.indexOf(v) - 1)] || v); break;
      }
    }, [s]);
    useEffect(() => {
      if (!playing || !s) return undefined;
      const t = setTimeout(() => { if (pos < s.count - 1) setPosState(pos + 1); else { setPlaying(false); setMsg('end of the timeline'); } }, 1000 / speed);
      return () => clearTimeout(t);
    }, [playing, pos, speed, s]);
    useEffect(() => {
      const KEYS = { ArrowRight: 'next', j: 'next', n: 'next', ArrowLeft: 'back', k: 'back', b: 'back', p: 'back', f: 'nextFail', F: 'prevFail',
        ' ': 'play', c: 'play', g: 'first', Home: 'first', G: 'last', End: 'last', '+': 'faster', '=': 'faster', '-': 'slower' };
      const onKey = (e) => {
        if (e.target && /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName) && e.target.type !== 'range') return;
        if (e.metaKey || e.ctrlKey || e.altKey) return;
        const c = KEYS[e.key];
        if (c) { e.preventDefault(); cmd(c); }
      };
      document.addEventListener('keydown', onKey);
      return () => document.removeEventListener('keydown', onKey);
    }, [cmd]);

    if (idx.error) return html`<main><h1>Step through <span class="mono">${runId}</span></h1><${Err} error=${idx.error} /></main>`;
    if (!s || pos === null) return html`<main><h1>Step through <span class="mono">${runId}</span></h1><p class="loading">re-running the reducer over the ${source === 'kafka' ? 'log' : 'archive'} (the run's agents' whole history)…</p></main>`;
    const ev = step && step.event;
    const diff = step ? { keyed: s.keyed, changes: step.changes } : null;
    const nChanges = step ? Object.keys(step.changes).length : 0;
    return html`<main>
      <h1>Step through <${A} to=${href.run(runId)} cls="mono">${runId}<//></h1>
      <div class="stats"><span>${fmtInt(s.count)} steps</span><span>${s.failures.length} failures/violations</span>
        <span>${fmtInt(s.events_folded)} events folded from ${s.source} for ${s.agents} agent(s) in ${s.build_seconds}s</span>
        <span>source <select value=${source} onChange=${(e) => setQuery({ source: e.target.value, step: 0 }, false)} aria-label="source"><option value="kafka">kafka</option><option value="archive">archive</option></select></span></div>
      <div class="panel controls">
        <button onClick=${() => cmd('first')} title="first (g)">« first</button>
        <button onClick=${() => cmd('prevFail')} title="previous failure (F)">⇤ fail</button>
        <button onClick=${() => cmd('back')} title="back (← k)" aria-label="back">◀</button>
        <button class=${playing ? 'on' : 'primary'} onClick=${() => cmd('play')} title="play/pause (space)" aria-label="play">${playing ? '❚❚ pause' : '▶ play'}</button>
        <button onClick=${() => cmd('next')} title="next (→ j)" aria-label="next">▶</button>
        <button onClick=${() => cmd('nextFail')} title="next failure (f)" aria-label="next failure">fail ⇥</button>
        <button onClick=${() => cmd('last')} title="last (G)">last »</button>
        <label class="dim">speed <select value=${speed} onChange=${(e) => setSpeed(Number(e.target.value))} aria-label="speed">${SPEEDS.map((v) => html`<option value=${v}>${v}/s</option>`)}</select></label>
        <input type="range" min="0" max=${s.count - 1} value=${pos} onInput=${(e) => go(Number(e.target.value))} aria-label="step" />
        <span class="pos" data-pos=${pos}>step ${pos + 1} / ${s.count}</span>
        ${msg ? html`<span class="dim">${msg}</span>` : null}
      </div>
      <div class="scrub">${s.failures.map((i) => html`<i style=${{ left: (100 * i) / Math.max(1, s.count - 1) + '%' }}></i>`)}<b style=${{ left: (100 * pos) / Math.max(1, s.count - 1) + '%' }}></b></div>
      <div class="keys"><kbd>→</kbd>/<kbd>j</kbd> next · <kbd>←</kbd>/<kbd>k</kbd> back · <kbd>f</kbd>/<kbd>F</kbd> next/previous failure · <kbd>space</kbd> play/pause · <kbd>+</kbd>/<kbd>-</kbd> speed · <kbd>g</kbd>/<kbd>G</kbd> first/last</div>
      ${stepErr ? html`<${Err} error=${stepErr} />` : null}
      ${!step ? html`<p class="loading">loading step…</p>` : html`<div class="debug-grid">
        <section class="panel step-event" data-step=${step.index} data-failure=${String(step.failure)}>
          <h2>${step.failure ? html`<span class="failure-flag">FAILURE</span> ` : null}${kindOf(ev.type)} <span class="tag">${ev.type}</span></h2>
          <dl class="kv">
            <dt>id</dt><dd><${A} to=${href.run(runId, { event: ev.id })} cls="mono">${ev.id}<//></dd>
            <dt>time</dt><dd class="mono">${ev.time}</dd>
            <dt>agent</dt><dd><${A} to=${href.agent(ev.agentid)}>${ev.agentid}<//></dd>
            <dt>task</dt><dd>${ev.taskid || '–'}</dd>
            <dt>position</dt><dd class="mono">${step.position ? 'p' + step.position.partition + '@' + step.position.offset : '–'}</dd>
            <dt>causes</dt><dd>${(ev.causes || []).map((c) => html`<div><${A} to=${href.event(c, { mode: 'why' })} cls="mono">${shortId(c)}<//></div>`)}</dd>
          </dl>
          <div class="links"><${A} to=${href.event(ev.id, { mode: 'why' })}>why?<//><${A} to=${href.event(ev.id, { mode: 'impact' })}>impact<//></div>
          <h3>Payload</h3><div class="tree"><${Tree} value=${ev.data} /></div>
          ${step.derived.length ? html`<h3>Derived</h3>${step.derived.map((d) => html`<div class=${d.kind === 'violation' ? 'error derived' : 'derived'}>
            <b>${d.kind}</b> ${d.kind === 'violation' ? html`${d.category}: ${d.detail}` : html`${d.tool} → ${d.outcome}`}</div>`)}` : null}
        </section>
        <section class="panel step-state">
          <h2>State of <${A} to=${href.agent(ev.agentid)}>${ev.agentid}<//> after this event</h2>
          <h3>Changed (${nChanges})</h3>
          <table class="changes"><thead><tr><th>field</th><th>before</th><th>after</th></tr></thead><tbody>${Object.entries(step.changes).map(([p, c]) => html`<tr data-path=${p}><td class="path">${p}</td><td class="before">${Val(c.before, '∅')}</td><td class="after">${Val(c.after, '∅ removed')}</td></tr>`)}</tbody></table>
          <h3>State</h3>
          <div class="tree state-tree"><${Tree} value=${step.state} diff=${diff} collapsed=${true} /></div>
        </section>
      </div>`}
    </main>`;
  }

  // --- 4. causality -----------------------------------------------------------------------------
  let graphLibs = null;
  function loadGraphLibs() {
    if (graphLibs) return graphLibs;
    const srcs = (document.body.dataset.graphJs || '').split(' ').filter(Boolean);
    graphLibs = srcs.reduce((p, src) => p.then(() => new Promise((ok, bad) => {
      const s = document.createElement('script'); s.src = src; s.onload = ok; s.onerror = () => bad(new Error('cannot load ' + src)); document.head.appendChild(s);
    })), Promise.resolve()).then(() => { if (window.cytoscapeDagre) window.cytoscape.use(window.cytoscapeDagre); });
    return graphLibs;
  }
  const NODE_COLOR = { think: '#3b82f6', act: '#ea8a1a', learn: '#16a34a', lifecycle: '#7b8494' };
  const catOf = (type) => (type ? type.split('.')[1] : null);
  const FAILED = new Set(['error', 'failed', 'cancelled']);

  function GraphView({ nodes, edges, target, marked, onTap }) {
    const ref = useRef(null);
    const [err, setErr] = useState(null);
    useEffect(() => {
      let cy = null, live = true;
      loadGraphLibs().then(() => {
        if (!live) return;
        cy = window.cytoscape({
          container: ref.current,
          elements: [
            ...nodes.map((n) => ({ data: { id: n.id, label: (n.agent || '?') + '\n' + (n.type ? kindOf(n.type) + (n.status ? ' · ' + n.status : '') : 'not arrived'),
              color: NODE_COLOR[catOf(n.type)] || '#cfd4dc', failed: FAILED.has(n.status) ? 1 : 0, target: n.id === target ? 1 : 0, marked: marked.has(n.id) ? 1 : 0 } })),
            ...edges.map(([a, b]) => ({ data: { id: a + '>' + b, source: a, target: b } })),
          ],
          style: [
            { selector: 'node', style: { 'background-color': 'data(color)', label: 'data(label)', 'text-wrap': 'wrap', 'font-size': 11, color: '#1d2430',
              'text-valign': 'bottom', 'text-halign': 'center', 'text-margin-y': 3, width: 16, height: 16, 'border-width': 1, 'border-color': '#fff' } },
            { selector: 'node[target = 1]', style: { width: 28, height: 28, 'border-width': 4, 'border-color': '#1d2430', 'font-weight': 'bold' } },
            { selector: 'node[marked = 1]', style: { 'border-width': 3, 'border-color': '#d3343d', 'border-style': 'dashed' } },
            { selector: 'node[failed = 1]', style: { 'background-color': '#d3343d', shape: 'diamond' } },
            { selector: 'edge', style: { width: 1.2, 'line-color': '#aab2c0', 'target-arrow-color': '#aab2c0', 'target-arrow-shape': 'triangle', 'curve-style': 'bezier', 'arrow-scale': 0.8 } },
          ],
          layout: { name: window.cytoscapeDagre ? 'dagre' : 'breadthfirst', rankDir: 'LR', nodeSep: 22, rankSep: 40, directed: true },
          maxZoom: 2.5,
        });
        cy.on('tap', 'node', (e) => onTap(e.target.id()));
        ref.current.dataset.nodes = String(cy.nodes().length);
        ref.current.dataset.edges = String(cy.edges().length);
      }, (e) => live && setErr(e));
      return () => { live = false; if (cy) cy.destroy(); };
    }, [nodes, edges, target]);
    return html`<div>${err ? html`<${Err} error=${err} />` : null}<div id="cy" class="panel" ref=${ref} aria-label="causality graph"></div></div>`;
  }

  function NodeList({ nodes, target, mode }) {
    return html`<ul class="ids node-list">${nodes.map((n) => html`<li key=${n.id} class=${n.id === target ? 'target' : ''} data-id=${n.id} data-distance=${n.distance}>
      <span class="dim">${n.distance === undefined ? '' : (mode === 'why' ? '−' : '+') + n.distance}</span>
      <${A} to=${href.event(n.id, { mode })} cls="mono">${shortId(n.id)}<//>
      <span>${n.agent || ''}</span><span class="dim">${n.type ? kindOf(n.type) : 'not arrived'}</span>${n.status ? html`<${Badge} s=${n.status} />` : null}
      ${n.run ? html`<${A} to=${href.run(n.run, { event: n.id })} cls="dim">run<//>` : null}</li>`)}</ul>`;
  }

  function EventGraphPage({ eventId }) {
    const q = query();
    const mode = q.mode === 'impact' ? 'impact' : 'why';
    const depth = Number(q.depth || (mode === 'why' ? 50 : 100));
    const res = useApi('/events/' + enc(eventId) + '/' + mode, { depth });
    const [other, setOther] = useState('');
    const d = res.data;
    const model = useMemo(() => {
      if (!d) return null;
      const nodes = mode === 'why' ? d.events : [Object.assign({ distance: 0 }, d.event), ...d.events];
      const have = new Set(nodes.map((n) => n.id));
      const edges = [];
      for (const n of nodes) for (const c of n.causes || []) if (have.has(c)) edges.push([c, n.id]);
      const marked = new Set((d.violations || []).flatMap((v) => v.events || []));
      return { nodes, edges, marked };
    }, [d]);
    const target = mode === 'why' ? (d && d.targets ? d.targets[0] : eventId) : eventId;
    const tap = (id) => navigate(href.event(id, { mode, depth: q.depth }));
    return html`<main>
      <h1>${mode === 'why' ? 'Why' : 'Impact of'} <span class="mono">${eventId}</span></h1>
      <div class="bar">
        <button class=${mode === 'why' ? 'on' : ''} onClick=${() => setQuery({ mode: 'why', depth: undefined }, false)}>why (causes)</button>
        <button class=${mode === 'impact' ? 'on' : ''} onClick=${() => setQuery({ mode: 'impact', depth: undefined }, false)}>impact (effects)</button>
        <label>depth <input type="number" min="1" max="10000" value=${depth} style=${{ width: '70px' }} onChange=${(e) => setQuery({ depth: e.target.value }, false)} aria-label="depth" /></label>
        <form class="bar" onSubmit=${(e) => { e.preventDefault(); if (other.trim()) navigate(href.path({ source: eventId, target: other.trim() })); }}>
          <label>path to <input placeholder="another event id" value=${other} onInput=${(e) => setOther(e.target.value)} style=${{ width: '290px' }} aria-label="path target" /></label><button type="submit">find path</button>
        </form>
        ${d ? html`<span class="dim">${model.nodes.length} events${d.truncated ? ' · more beyond this depth' : ''}${mode === 'impact' ? ' · ' + d.failures + ' failed' : ' · ' + d.roots.length + ' root cause(s)'}</span>` : null}
      </div>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${!d ? (res.loading ? html`<p class="loading">walking the graph…</p>` : null) : html`<div class="graph-layout">
        <div>
          ${d.violation ? html`<p class="error"><b>violation ${d.violation.category}</b> ${d.violation.detail}</p>` : null}
          <${GraphView} nodes=${model.nodes} edges=${model.edges} target=${target} marked=${model.marked} onTap=${tap} />
          <p class="dim">Arrows run from cause to effect. Click a node to re-centre on it. Red diamond: failed; dashed red: part of a violation; large: the event asked about.</p>
        </div>
        <aside class="panel side">
          <h3>${mode === 'why' ? 'Causes, nearest first' : 'Effects, nearest first'}</h3>
          <${NodeList} nodes=${model.nodes} target=${target} mode=${mode} />
          ${(d.violations || []).length ? html`<h3>Violations</h3>${d.violations.map((v) => html`<div class="error"><b>${v.category}</b> ${v.detail}</div>`)}` : null}
        </aside></div>`}
    </main>`;
  }

  function PathPage() {
    const q = query();
    const res = useApi(q.source && q.target ? '/path' : null, { source: q.source, target: q.target });
    const d = res.data;
    const model = useMemo(() => {
      if (!d) return null;
      const edges = [];
      for (let i = 1; i < d.events.length; i++) {
        const a = d.events[i - 1].id, b = d.events[i].id;
        edges.push(d.relation === 'caused_by' ? [b, a] : [a, b]);
      }
      return { nodes: d.events.map((e, i) => Object.assign({ distance: i }, e)), edges };
    }, [d]);
    return html`<main>
      <h1>Causal path</h1>
      <p><span class="mono">${q.source}</span> ${d ? (d.relation === 'caused_by' ? 'was caused by' : 'led to') : '…'} <span class="mono">${q.target}</span>${d ? ' in ' + d.hops + ' hop(s)' : ''}</p>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${d ? html`<div class="graph-layout"><${GraphView} nodes=${model.nodes} edges=${model.edges} target=${q.source} marked=${new Set()} onTap=${(id) => navigate(href.event(id))} />
        <aside class="panel side"><h3>Chain</h3><${NodeList} nodes=${model.nodes} target=${q.source} mode="why" /></aside></div>` : null}
    </main>`;
  }

  // --- 5. agent ---------------------------------------------------------------------------------
  function AgentPage({ agentId }) {
    const res = useApi('/agents/' + enc(agentId), {});
    const d = res.data;
    const st = d && d.state;
    return html`<main>
      <h1>Agent <span class="mono">${agentId}</span> ${st ? html`<${Badge} s=${st.status} />` : null}</h1>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${!d ? (res.loading ? html`<p class="loading">loading agent…</p>` : null) : html`
        ${Object.entries(d.errors).map(([k, v]) => html`<p class="dim">${k}: ${v}</p>`)}
        ${st ? html`<div class="cards">
          <div class="card"><div class="l">role / model</div><div class="v">${st.role || '–'}</div><div class="dim">${st.model || ''}</div></div>
          <div class="card"><div class="l">current run</div><div class="v">${st.run_id ? html`<${A} to=${href.run(st.run_id)}>${st.run_id}<//>` : '–'}</div><div>${st.run ? html`<${Badge} s=${st.run.status} />` : null}</div></div>
          <div class="card"><div class="l">events</div><div class="v" data-card="events">${fmtInt(st.events_total)}</div><div class="dim">last ${st.last_event_time || '–'}</div></div>
          <div class="card"><div class="l">success (last ${st.world.outcomes.length})</div><div class="v" data-card="success">${pct(st.world.recent_success_rate)}</div><div class="dim" data-card="failed">${st.world.actions} actions / ${st.world.failed} failed (${st.world.errors} errors, ${st.world.mismatches} mismatches)</div></div>
          <div class="card"><div class="l">tokens</div><div class="v">${fmtInt(st.world.input_tokens + st.world.output_tokens)}</div><div class="dim">${fmtCost(st.world.cost_usd)}</div></div>
          <div class="card"><div class="l">open actions</div><div class="v">${Object.keys(st.open_actions).length}</div><div class="dim">${st.lessons} lessons</div></div>
        </div>` : null}
        <h2>Tools</h2>
        <div class="panel"><table class="grid"><thead><tr><th>tool</th><th class="num">calls</th><th class="num">errors</th><th class="num">mismatches</th><th>success rate</th><th class="num">mean duration</th></tr></thead>
          <tbody>${d.tools.map((t) => html`<tr data-tool=${t.tool}><td>${t.tool}</td><td class="num">${t.calls}</td><td class="num">${t.errors}</td><td class="num">${t.mismatches}</td>
            <td data-col="success"><span class="rate"><span style=${{ width: ((t.success_rate || 0) * 100) + '%' }}></span></span>${pct(t.success_rate)}</td><td class="num">${fmtDur(t.mean_ms)}</td></tr>`)}</tbody></table></div>
        <h2>Recent runs</h2>
        ${d.runs ? html`<div class="panel"><table class="grid"><thead><tr><th>run</th><th>goal</th><th>status</th><th>started</th><th class="num">events</th><th class="num">errors</th><th class="num">violations</th></tr></thead>
          <tbody>${d.runs.runs.map((r) => html`<tr><td><${A} to=${href.run(r.run_id)} cls="mono">${r.run_id}<//></td><td class="goal">${r.goal}</td><td><${Badge} s=${r.status} /></td><td class="mono">${fmtTime(r.started_us)}</td>
            <td class="num">${fmtInt(r.events)}</td><td class="num">${fmtInt(r.errors)}</td><td class="num">${fmtInt(r.violations)}</td></tr>`)}</tbody></table></div>
          <p class="dim">${fmtInt(d.runs.total)} runs in all · <${A} to=${href.runs({ agent: agentId })}>all of them<//></p>` : null}
        <h2>Violations</h2>
        ${d.violations ? html`<div class="panel"><table class="grid"><thead><tr><th>time</th><th>category</th><th>run</th><th>tool</th><th>expected</th><th>actual</th><th>detail</th><th>event</th></tr></thead>
          <tbody>${d.violations.map((v) => html`<tr><td class="mono">${fmtTime(v.t)}</td><td><span class="badge st-error">${v.category}</span></td><td>${v.run_id ? html`<${A} to=${href.run(v.run_id, { event: v.detected_by })}>${v.run_id}<//>` : '–'}</td>
            <td>${v.tool}</td><td>${v.expected}</td><td>${v.actual}</td><td class="wrap">${v.detail}</td><td><${A} to=${href.event(v.detected_by)} cls="mono">${shortId(v.detected_by)}<//></td></tr>`)}</tbody></table></div>` : null}
        ${st ? html`<h2>Full state</h2><div class="panel tree" style=${{ padding: '8px 12px' }}><${Tree} value=${st} collapsed=${true} /></div>` : null}`}
    </main>`;
  }

  // --- 6. dead letters --------------------------------------------------------------------------
  function DlqPage() {
    const q = query();
    const limit = 100, offset = Number(q.offset || 0);
    const res = useApi('/deadletters', { reason: q.reason, limit, offset });
    const [open, setOpen] = useState(() => new Set());
    const toggle = (k) => setOpen((o) => { const n = new Set(o); if (n.has(k)) n.delete(k); else n.add(k); return n; });
    const d = res.data;
    return html`<main>
      <h1>Dead letters <span class="dim">agent-events-dlq</span></h1>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${!d ? (res.loading ? html`<p class="loading">reading the dead-letter topic…</p>` : null) : html`
        <div class="chips"><${A} to=${href.dlq()} cls=${!q.reason ? 'on' : ''}>all ${fmtInt(d.all)}<//>
          ${Object.entries(d.reasons).map(([r, n]) => html`<${A} to=${href.dlq({ reason: r })} cls=${q.reason === r ? 'on' : ''}>${r} ${fmtInt(n)}<//>`)}</div>
        <div class="pager"><span>${d.total ? (offset + 1) + '–' + (offset + d.records.length) + ' of ' + fmtInt(d.total) : 'no dead letters'}</span>
          <button disabled=${offset === 0} onClick=${() => setQuery({ offset: Math.max(0, offset - limit) }, false)}>‹ Prev</button>
          <button disabled=${offset + d.records.length >= d.total} onClick=${() => setQuery({ offset: offset + limit }, false)}>Next ›</button></div>
        <div class="panel"><table class="grid"><thead><tr><th>time</th><th>reason</th><th>detail</th><th>path</th><th>stage</th><th>from</th><th class="num">bytes</th><th></th></tr></thead>
          <tbody>${d.records.map((r) => { const k = r.dlq_partition + ':' + r.dlq_offset; return html`
            <tr key=${k} data-reason=${r.reason}><td class="mono">${r.timestamp_ms ? fmtTime(r.timestamp_ms * 1000) : '–'}</td><td><span class="badge st-error">${r.reason}</span></td>
              <td class="wrap">${r.detail}</td><td class="mono">${r.path || ''}</td><td>${r.stage || r.rejected_by || ''}</td>
              <td class="mono">${r.topic ? r.topic + ' p' + r.partition + '@' + r.offset : ''}</td><td class="num">${fmtInt(r.original_size)}</td>
              <td><button data-k=${k} onClick=${() => toggle(k)}>${open.has(k) ? 'hide' : 'show bytes'}</button></td></tr>
            ${open.has(k) ? html`<tr key=${k + 'b'}><td colspan="8"><div class="dim">original as ${r.original.encoding}${r.original.clipped ? ' (first 16 KiB)' : ''}${r.original_truncated ? ' · truncated in the DLQ record' : ''}${r.original_sha256 ? ' · sha256 ' + r.original_sha256 : ''}${r.key ? ' · key ' + r.key : ''}</div>
              <pre class="bytes" data-encoding=${r.original.encoding}>${r.original.text}</pre></td></tr>` : null}`; })}</tbody></table></div>`}
    </main>`;
  }

  // --- routing ----------------------------------------------------------------------------------
  function route() {
    const p = location.pathname.slice(ROOT.length).replace(/\/+$/, '') || '/runs';
    const seg = p.split('/').filter(Boolean).map(decodeURIComponent);
    if (seg[0] === 'runs' && seg.length === 1) return ['runs', html`<${RunsPage} key=${location.search} />`];
    if (seg[0] === 'runs' && seg.length === 2) return ['runs', html`<${RunPage} key=${seg[1]} runId=${seg[1]} />`];
    if (seg[0] === 'runs' && seg[2] === 'debug') return ['runs', html`<${DebugPage} key=${seg[1] + (query().source || '')} runId=${seg[1]} />`];
    if (seg[0] === 'events' && seg.length === 2) return ['runs', html`<${EventGraphPage} key=${seg[1]} eventId=${seg[1]} />`];
    if (seg[0] === 'path') return ['runs', html`<${PathPage} key=${location.search} />`];
    if (seg[0] === 'agents' && seg.length === 2) return ['agents', html`<${AgentPage} key=${seg[1]} agentId=${seg[1]} />`];
    if (seg[0] === 'deadletters') return ['dlq', html`<${DlqPage} />`];
    for (const x of extraPages) { const found = x.route(seg); if (found) return found; }
    return ['', html`<main><h1>Not found</h1><p>No page at <code>${location.pathname}</code>. <${A} to=${href.runs()}>Runs<//></p></main>`];
  }
  function App() {
    const [, setN] = useState(0);
    useEffect(() => {
      rerender = () => setN((n) => n + 1);
      window.addEventListener('popstate', rerender);
      return () => window.removeEventListener('popstate', rerender);
    }, []);
    const [page, view] = route();
    return html`<${Header} page=${page} />${view}`;
  }
  const mount = document.getElementById('app');
  mount.textContent = '';
  render(html`<${App} />`, mount);
})();
