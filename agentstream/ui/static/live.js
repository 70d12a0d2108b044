/* The live view (/live): one EventSource on /api/v1/live/stream; no reloads. The server
 * sends a snapshot, then stats once a second, new events (the tail), violations as they
 * happen, and a gap note if this page missed messages. EventSource reconnects by itself
 * and sends Last-Event-ID, so a short drop loses nothing. */
(window.AgentStreamPages = window.AgentStreamPages || []).push(function (kit) {
  'use strict';
  const { html, useState, useEffect, useRef, A, href, query, setQuery, fmtInt, fmtTime, shortId, Badge, ROOT, qs } = kit;
  const { Chart } = window.AgentStreamCharts(kit);
  const TAIL_MAX = 200;

  const fmtRate = (r) => (r >= 100 ? fmtInt(Math.round(r)) : r.toFixed(1));
  const timeOf = (iso) => fmtTime(Date.parse(iso) * 1000);
  const eventLink = (e) => (e.run ? href.run(e.run, { event: e.id }) : href.event(e.id));

  function LivePage() {
    const q = query();
    const [figs, setFigs] = useState(null);
    const [tail, setTail] = useState([]);
    const [held, setHeld] = useState([]);
    const [paused, setPaused] = useState(false);
    const [gaps, setGaps] = useState(0);
    const [conn, setConn] = useState('connecting');
    const [form, setForm] = useState({ agent: q.agent || '', type: q.type || '', run: q.run || '' });
    const pausedRef = useRef(false);
    pausedRef.current = paused;

    useEffect(() => {
      const src = new EventSource(ROOT + '/api/v1/live/stream' + qs({ agent: q.agent, type: q.type, run: q.run }));
      const add = (lines) => {
        const now = Date.now();
        const rows = lines.map((e) => Object.assign({ seen_ms: now }, e)).reverse();
        if (pausedRef.current) setHeld((h) => rows.concat(h).slice(0, TAIL_MAX));
        else setTail((t) => rows.concat(t).slice(0, TAIL_MAX));
      };
      src.onopen = () => setConn('live');
      src.onerror = () => setConn('reconnecting');
      src.addEventListener('snapshot', (m) => { const d = JSON.parse(m.data); setFigs(d); setTail(d.tail.slice().reverse().map((e) => Object.assign({ seen_ms: null }, e))); });
      src.addEventListener('stats', (m) => { const d = JSON.parse(m.data); setFigs((f) => Object.assign({}, f || {}, d, { violations: (f && f.violations && f.violations.length > d.violations.length) ? f.violations : d.violations })); });
      src.addEventListener('events', (m) => add(JSON.parse(m.data).events));
      src.addEventListener('violations', (m) => { const d = JSON.parse(m.data); setFigs((f) => f && Object.assign({}, f, { violations: d.violations.concat(f.violations || []).slice(0, 50) })); });
      src.addEventListener('gap', (m) => setGaps((g) => g + JSON.parse(m.data).lost));
      return () => src.close();
    }, [location.search]);

    const resume = () => { setTail((t) => held.concat(t).slice(0, TAIL_MAX)); setHeld([]); setPaused(false); };
    const apply = (e) => { e.preventDefault(); setQuery(form, false); };
    const field = (k) => ({ value: form[k], onInput: (e) => setForm(Object.assign({}, form, { [k]: e.target.value })) });
    const f = figs;
    const lagRows = [];
    if (f) for (const p of f.parts || []) for (const [g, n] of Object.entries(p.lag || {})) lagRows.push({ part: p.part, group: g, lag: n });
    const dlqReasons = f ? Array.from(new Set((f.dead_letters || []).flatMap((m) => Object.keys(m.by_reason)))).sort() : [];
    const dlqLastMin = f && f.dead_letters && f.dead_letters.length ? Object.values(f.dead_letters[f.dead_letters.length - 1].by_reason).reduce((a, b) => a + b, 0) : 0;
    return html`<main class="live">
      <h1>Live <span class=${'conn conn-' + conn} data-conn=${conn}>${conn}</span>${f && f.log ? html` <span class="dim">${f.log.detail}</span>` : null}</h1>
      ${gaps ? html`<p class="error" data-gap=${gaps}>${fmtInt(gaps)} live messages were lost by this page (it fell behind or reconnected too late); figures below are complete, the tail is not.</p>` : null}
      ${!f ? html`<p class="loading">connecting to the live stream…</p>` : html`
      <div class="cards">
        <div class="card"><div class="l">events/s (last ${f.rate.window_s} s)</div><div class="v" data-live="rate">${fmtRate(f.rate.total)}</div></div>
        <div class="card"><div class="l">events seen</div><div class="v" data-live="events">${fmtInt(f.totals.events || 0)}</div><div class="dim">${fmtInt(f.totals.invalid || 0)} invalid</div></div>
        <div class="card"><div class="l">dead letters</div><div class="v" data-live="dead-letters">${fmtInt(f.totals.dead_letters || 0)}</div><div class="dim">${fmtInt(dlqLastMin)} in the last minute</div></div>
        <div class="card"><div class="l">violations seen</div><div class="v" data-live="violations">${fmtInt(f.totals.violations || 0)}</div></div>
        <div class="card"><div class="l">agents active</div><div class="v" data-live="agents">${f.agents.length}</div></div>
      </div>
      <div class="cols">
        <section><h2>Events per second</h2>
          <div class="panel pad"><${Chart} name="rate" time=${true} height=${160} x=${f.series.map((p) => p[0])} series=${[{ label: 'events/s', values: f.series.map((p) => p[1]) }]} /></div>
          <div class="panel"><table class="grid" data-table="by-type"><thead><tr><th>type</th><th class="num">events/s</th></tr></thead>
            <tbody>${Object.entries(f.rate.by_type).map(([t, r]) => html`<tr data-type=${t}><td class="mono">${t}</td><td class="num">${fmtRate(r)}</td></tr>`)}
            ${Object.keys(f.rate.by_type).length ? null : html`<tr><td colspan="2" class="dim">nothing in the last ${f.rate.window_s} s</td></tr>`}</tbody></table></div>
        </section>
        <section><h2>Consumer lag</h2>
          <div class="panel"><table class="grid" data-table="lag"><thead><tr><th>part</th><th>group</th><th class="num">records behind</th></tr></thead>
            <tbody>${lagRows.map((r) => html`<tr data-group=${r.group}><td>${r.part}</td><td class="mono">${r.group}</td><td class="num">${fmtInt(r.lag)}</td></tr>`)}
            ${lagRows.length ? null : html`<tr><td colspan="3" class="dim">${f.status_error || 'no lag figures (is the broker up?)'}</td></tr>`}</tbody></table></div>
          <h2>Stack parts</h2>
          <div class="panel"><table class="grid" data-table="parts"><thead><tr><th>part</th><th>state</th><th class="num">pid</th><th class="num">restarts</th><th>detail</th></tr></thead>
            <tbody>${(f.parts || []).map((p) => html`<tr data-part=${p.part}><td>${p.part}</td><td><span class=${'badge st-' + (p.ok ? 'ok' : 'error')}>${p.state}</span></td><td class="num">${p.pid || ''}</td><td class="num">${p.restarts || 0}</td>
              <td class="wrap">${p.last_error ? html`<span class="error">${p.last_error}</span> ` : null}${p.detail}${p.metrics_url ? html` · <a href=${p.metrics_url}>metrics</a>` : null}</td></tr>`)}</tbody></table></div>
        </section>
      </div>
      <div class="cols">
        <section><h2>Agents active now</h2>
          <div class="panel"><table class="grid" data-table="agents"><thead><tr><th>agent</th><th>status</th><th>run</th><th class="num">idle</th></tr></thead>
            <tbody>${f.agents.map((a) => html`<tr data-agent=${a.agent}><td><${A} to=${href.agent(a.agent)}>${a.agent}<//></td><td>${a.status}</td><td>${a.run ? html`<${A} to=${href.run(a.run)} cls="mono">${a.run}<//>` : '–'}</td><td class="num">${a.idle_s} s</td></tr>`)}
            ${f.agents.length ? null : html`<tr><td colspan="4" class="dim">no agent emitted in the last 2 minutes</td></tr>`}</tbody></table></div>
          <h2>Dead letters per minute</h2>
          <div class="panel"><table class="grid" data-table="dlq"><thead><tr><th>minute (UTC)</th>${dlqReasons.map((r) => html`<th class="num">${r}</th>`)}</tr></thead>
            <tbody>${(f.dead_letters || []).slice().reverse().map((m) => html`<tr><td class="mono">${fmtTime(m.minute * 1e6).slice(0, 16)}</td>${dlqReasons.map((r) => html`<td class="num">${fmtInt(m.by_reason[r] || 0)}</td>`)}</tr>`)}
            ${(f.dead_letters || []).length ? null : html`<tr><td class="dim">none since this page's server started watching · <${A} to=${href.dlq()}>all dead letters<//></td></tr>`}</tbody></table></div>
        </section>
        <section><h2>Violations as they happen</h2>
          <div class="panel"><table class="grid" data-table="violations"><thead><tr><th>time</th><th>category</th><th>agent</th><th>tool</th><th>detail</th></tr></thead>
            <tbody>${(f.violations || []).map((v) => html`<tr data-violation=${v.id}><td class="mono">${timeOf(v.time)}</td><td><span class="badge st-error">${v.category}</span></td>
              <td><${A} to=${href.agent(v.agent)}>${v.agent}<//></td><td>${v.tool || ''}</td><td class="wrap"><${A} to=${v.run ? href.run(v.run, { event: v.detected_by }) : href.event(v.detected_by)}>${v.detail || shortId(v.detected_by)}<//></td></tr>`)}
            ${(f.violations || []).length ? null : html`<tr><td colspan="5" class="dim">none yet</td></tr>`}</tbody></table></div>
        </section>
      </div>`}
      <h2>Live tail</h2>
      <form class="bar" onSubmit=${apply}>
        <label>Agent <input name="agent" ...${field('agent')} placeholder="agent id" /></label>
        <label>Type <input name="type" ...${field('type')} placeholder="e.g. act.completed" /></label>
        <label>Run <input name="run" ...${field('run')} placeholder="run id" /></label>
        <button class="primary" type="submit">Filter</button>
        <${A} to=${ROOT + '/live'}>clear<//>
        ${paused ? html`<button type="button" data-action="resume" onClick=${resume}>▶ Resume${held.length ? ' (' + held.length + ' new)' : ''}</button>`
          : html`<button type="button" data-action="pause" onClick=${() => setPaused(true)}>❚❚ Pause</button>`}
      </form>
      <div class="panel"><table class="grid tail" data-table="tail"><thead><tr><th>time</th><th>agent</th><th>type</th><th>run</th><th>summary</th></tr></thead>
        <tbody>${tail.map((e) => html`<tr key=${e.id} data-event=${e.id} data-ts=${e.ts_ms}>
          <td class="mono"><${A} to=${eventLink(e)}>${timeOf(e.time)}<//></td><td><${A} to=${href.agent(e.agent)}>${e.agent}<//></td><td class="mono">${e.type}</td>
          <td>${e.run ? html`<${A} to=${href.run(e.run)} cls="mono">${e.run}<//>` : '–'}</td><td class="wrap">${e.summary}</td></tr>`)}
        ${tail.length ? null : html`<tr><td colspan="5" class="dim">waiting for new events…</td></tr>`}</tbody></table></div>
    </main>`;
  }

  return {
    nav: { label: 'Live', path: '/live', key: 'live', first: true },
    route: (seg) => (seg[0] === 'live' ? ['live', html`<${LivePage} key=${'live'} />`] : null),
  };
});
