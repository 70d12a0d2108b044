/* Dashboards (/dashboards/cost|tools|violations|learning): each panel is one named query
 * (the same text `agentstream query --named` runs), with a link that opens it, with the
 * page's parameters, in the SQL workspace. Range, tenant and bucket live in the URL. */
(window.AgentStreamPages = window.AgentStreamPages || []).push(function (kit) {
  'use strict';
  const { html, useState, A, useApi, query, setQuery, fmtInt, fmtTime, shortId, Err, ROOT, qs, href, pct } = kit;
  const { Chart, pivot } = window.AgentStreamCharts(kit);
  const TABS = [['cost', 'Cost & tokens'], ['tools', 'Tool reliability'], ['violations', 'Violations'], ['learning', 'Learning']];
  const BUCKETS = [['', 'auto'], ['60', '1 min'], ['300', '5 min'], ['3600', '1 hour'], ['86400', '1 day']];
  const QUICK = [['1h', 3600], ['24h', 86400], ['7d', 7 * 86400], ['30d', 30 * 86400]];
  const isoLocal = (d) => d.toISOString().slice(0, 19);

  /* the SQL workspace URL that runs this panel's named query with these parameters */
  function sqlHref(panel) {
    const p = new URLSearchParams();
    p.set('named', panel.query);
    for (const [k, v] of Object.entries(panel.params)) p.append('param', k + '=' + v);
    return ROOT + '/sql?' + p.toString();
  }
  const sum = (rows, k) => rows.reduce((a, r) => a + (Number(r[k]) || 0), 0);
  function totals(rows, key, cols) {
    const by = new Map();
    for (const r of rows) {
      const t = by.get(r[key]) || Object.fromEntries(cols.map((c) => [c, 0]));
      for (const c of cols) t[c] += Number(r[c]) || 0;
      by.set(r[key], t);
    }
    return Array.from(by.entries()).sort((a, b) => (a[0] < b[0] ? -1 : 1));
  }

  function Panel({ title, panel, children, name }) {
    return html`<div class="panel" data-panel=${name || panel.query}>
      <div class="panel-head"><h3>${title}</h3><span class="dim">${fmtInt(panel.rows.length)} rows</span>
        <a class="sql-link" href=${sqlHref(panel)} data-sql-for=${panel.query}>SQL: ${panel.query} ↗</a></div>
      <div class="pad">${children}</div></div>`;
  }

  function CostTab({ d }) {
    const byAgent = d.panels.dash_cost_by_agent, byModel = d.panels.dash_cost_by_model;
    const ca = pivot(byAgent.rows, 'bucket', 'agent_id', 'cost_usd', 0);
    const ta = pivot(byAgent.rows, 'bucket', 'agent_id', 'tokens', 0);
    const cm = pivot(byModel.rows, 'bucket', 'model', 'cost_usd', 0);
    const tm = pivot(byModel.rows, 'bucket', 'model', 'tokens', 0);
    const tbl = (rows, key, label) => html`<table class="grid" data-totals=${key}><thead><tr><th>${label}</th><th class="num">cost (USD)</th><th class="num">input tokens</th><th class="num">output tokens</th><th class="num">tokens</th></tr></thead>
      <tbody>${totals(rows, key, ['cost_usd', 'input_tokens', 'output_tokens', 'tokens']).map(([k, t]) => html`<tr data-key=${k}><td>${k}</td><td class="num" data-col="cost_usd">${t.cost_usd.toFixed(6)}</td><td class="num" data-col="input_tokens">${fmtInt(t.input_tokens)}</td><td class="num" data-col="output_tokens">${fmtInt(t.output_tokens)}</td><td class="num" data-col="tokens">${fmtInt(t.tokens)}</td></tr>`)}</tbody></table>`;
    return html`<div class="grid2">
      <${Panel} title="Cost by agent (USD per bucket)" panel=${byAgent} name="cost-agent"><${Chart} name="cost-agent" kind="bar" time=${true} x=${ca.x} series=${ca.series} label="USD" />${tbl(byAgent.rows, 'agent_id', 'agent')}<//>
      <${Panel} title="Tokens by agent" panel=${byAgent} name="tokens-agent"><${Chart} name="tokens-agent" kind="bar" time=${true} x=${ta.x} series=${ta.series} label="tokens" /><//>
      <${Panel} title="Cost by model (USD per bucket)" panel=${byModel} name="cost-model"><${Chart} name="cost-model" kind="bar" time=${true} x=${cm.x} series=${cm.series} label="USD" />${tbl(byModel.rows, 'model', 'model')}<//>
      <${Panel} title="Tokens by model" panel=${byModel} name="tokens-model"><${Chart} name="tokens-model" kind="bar" time=${true} x=${tm.x} series=${tm.series} label="tokens" /><//>
    </div>`;
  }

  function ToolsTab({ d }) {
    const p = d.panels.dash_tool_reliability;
    const sr = pivot(p.rows, 'bucket', 'tool', 'success_rate');
    const p50 = pivot(p.rows, 'bucket', 'tool', 'p50_ms');
    const p95 = pivot(p.rows, 'bucket', 'tool', 'p95_ms');
    const tot = totals(p.rows, 'tool', ['calls', 'errors', 'mismatches', 'failed']);
    return html`<div class="grid2">
      <${Panel} title="Success rate per tool" panel=${p} name="tool-success"><${Chart} name="tool-success" time=${true} x=${sr.x} series=${sr.series} label="success rate" />
        <table class="grid" data-totals="tool"><thead><tr><th>tool</th><th class="num">calls</th><th class="num">errors</th><th class="num">mismatches</th><th class="num">success rate</th></tr></thead>
        <tbody>${tot.map(([k, t]) => html`<tr data-key=${k}><td>${k}</td><td class="num" data-col="calls">${fmtInt(t.calls)}</td><td class="num" data-col="errors">${fmtInt(t.errors)}</td><td class="num" data-col="mismatches">${fmtInt(t.mismatches)}</td><td class="num">${pct(t.calls ? 1 - t.failed / t.calls : null)}</td></tr>`)}</tbody></table><//>
      <${Panel} title="p50 duration per tool (ms)" panel=${p} name="tool-p50"><${Chart} name="tool-p50" time=${true} x=${p50.x} series=${p50.series} label="ms" /><//>
      <${Panel} title="p95 duration per tool (ms)" panel=${p} name="tool-p95"><${Chart} name="tool-p95" time=${true} x=${p95.x} series=${p95.series} label="ms" /><//>
    </div>`;
  }

  function ViolationsTab({ d }) {
    const q = query();
    const p = d.panels.dash_violations;
    const s = pivot(p.rows, 'bucket', 'category', 'violations', 0);
    const tot = totals(p.rows, 'category', ['violations']);
    const drill = useApi(q.category !== undefined ? '/dashboards/violations/events' : null, { category: q.category, since: q.since, until: q.until, tenant: q.tenant });
    return html`<div class="grid2">
      <${Panel} title="Violations per bucket, by category" panel=${p} name="violations"><${Chart} name="violations" kind="bar" time=${true} x=${s.x} series=${s.series} label="violations" />
        <table class="grid" data-totals="category"><thead><tr><th>category</th><th class="num">violations</th><th></th></tr></thead>
        <tbody>${tot.map(([k, t]) => html`<tr data-key=${k}><td>${k}</td><td class="num" data-col="violations">${fmtInt(t.violations)}</td><td><a href="#" data-drill=${k} onClick=${(e) => { e.preventDefault(); setQuery({ category: k }); }}>events ›</a></td></tr>`)}</tbody></table><//>
    </div>
    ${drill.data ? html`<h2>Violations: ${q.category || 'all categories'}</h2>
      <div class="panel" data-panel="drill"><div class="panel-head"><h3>${fmtInt(drill.data.rows.length)} violations</h3><a class="sql-link" href=${sqlHref(drill.data)}>SQL: ${drill.data.query} ↗</a></div>
      <table class="grid"><thead><tr><th>time</th><th>category</th><th>agent</th><th>run</th><th>tool</th><th>expected</th><th>actual</th><th>detail</th><th>event</th></tr></thead>
      <tbody>${drill.data.rows.map((v) => html`<tr data-drill-row=${v.detected_by}><td class="mono">${fmtTime(Date.parse(v.time) * 1000)}</td><td><span class="badge st-error">${v.category}</span></td>
        <td><${A} to=${href.agent(v.agent_id)}>${v.agent_id}<//></td><td>${v.run_id ? html`<${A} to=${href.run(v.run_id, { event: v.detected_by })} cls="mono">${v.run_id}<//>` : '–'}</td>
        <td>${v.tool || ''}</td><td class="wrap">${v.expected || ''}</td><td class="wrap">${v.actual || ''}</td><td class="wrap">${v.detail}</td><td><${A} to=${href.event(v.detected_by, { mode: 'why' })} cls="mono">${shortId(v.detected_by)}<//></td></tr>`)}</tbody></table></div>` : drill.error ? html`<${Err} error=${drill.error} />` : null}`;
  }

  const signed = (v, digits) => (v === null || v === undefined ? '–' : (v > 0 ? '+' : '') + Number(v).toFixed(digits));
  const fixed = (v, digits) => (v === null || v === undefined ? '–' : Number(v).toFixed(digits));
  /* the fit of one series, as dash_learning's row with point NULL gives it (slope per run,
   * the means of the first and the last tenth of the runs, their change) */
  function Fit({ s, what }) {
    if (!s || !s.n) return html`<div class="fit" data-fit=${what} data-n="0">${what}: no runs with one yet</div>`;
    const dir = s.slope > 0 ? 'up' : s.slope < 0 ? 'down' : '';
    const attr = (v) => (v === null || v === undefined ? '' : String(v));  /* '' = none */
    return html`<div class="fit" data-fit=${what} data-n=${s.n} data-slope=${attr(s.slope)} data-first=${attr(s.first_tenth)} data-last=${attr(s.last_tenth)} data-change=${attr(s.change)}><span><b>${what}</b></span><span>runs <b>${s.n}</b></span><span>slope <b class=${dir} data-slope=${s.slope}>${signed(s.slope, 4)}</b> per run</span>
      <span>first tenth <b>${fixed(s.first_tenth, 3)}</b> → last tenth <b>${fixed(s.last_tenth, 3)}</b> (<b class=${s.change > 0 ? 'up' : s.change < 0 ? 'down' : ''} data-change=${s.change}>${signed(s.change, 3)}</b>)</span></div>`;
  }
  /* a series' slices as a line; the values are also on the element, for checking */
  function Trend({ s, name, label, height }) {
    /* no point to draw (a planner never acts or decides): no empty chart; the fit line
     * below says "no runs with one yet" */
    const body = s.values.length
      ? html`<${Chart} name=${name} height=${height} x=${s.x} series=${[{ label, values: s.values }]} label=${label} />`
      : null;
    return html`<div data-trend=${name} data-x=${JSON.stringify(s.x)} data-values=${JSON.stringify(s.values)}>${body}</div>`;
  }
  const TRENDS = [['success_rate', 'success rate', 'action success rate'], ['feedback_score', 'feedback', 'feedback score'], ['recall_rate', 'recall rate', 'decisions citing a recalled episode']];
  const FIT = ['slope', 'first_tenth', 'last_tenth', 'change'];
  /* dash_learning's rows (sorted by scope, agent, metric, point; the whole series first)
   * as lines per scope and metric: the slices' values (x: an agent's run number, the
   * fleet's slice number) and the fit from the row with point null. Only reshaped. */
  function learningTrends(rows) {
    const empty = () => Object.fromEntries(TRENDS.map(([m]) => [m, { x: [], values: [], n: 0, slope: null, first_tenth: null, last_tenth: null, change: null }]));
    const fleet = empty(), agents = {};
    for (const r of rows) {
      const series = r.scope === 'fleet' ? fleet : (agents[r.agent_id] = agents[r.agent_id] || empty());
      const s = series[r.metric];
      if (!s) continue;
      if (r.point === null) { s.n = r.runs_with_value; for (const k of FIT) s[k] = r[k]; }
      else if (r.value !== null) { s.x.push(r.scope === 'fleet' ? r.point + 1 : r.run_to); s.values.push(r.value); }
    }
    return { fleet, agents };
  }
  function LearningTab({ d }) {
    const p = d.panels.dash_learning, t = learningTrends(p.rows);
    return html`<p class="dim">Each agent's runs are numbered in start order and cut into ${p.params.points} slices; a point is the mean per-run value of a slice (fleet: that slice of every agent's runs). Slope and tenths are over every run.</p>
    <div class="grid2">${TRENDS.map(([k, what, title]) => html`
      <${Panel} title=${'Fleet: ' + title + ' over successive runs'} panel=${p} name=${'fleet-' + k}><${Trend} s=${t.fleet[k]} name=${'fleet-' + k} label=${what} /><${Fit} s=${t.fleet[k]} what=${what} /><//>`)}
    </div>
    <h2>Per agent</h2>
    <div class="grid2">${Object.entries(t.agents).sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([agent, a]) => html`<div class="panel" data-agent-trend=${agent}>
      <div class="panel-head"><h3><${A} to=${href.agent(agent)}>${agent}<//></h3><span class="dim">x: run number</span></div>
      <div class="pad"><${Trend} s=${a.success_rate} name=${'agent-' + agent} height=${140} label="success rate" /><${Trend} s=${a.recall_rate} name=${'agent-recall-' + agent} height=${110} label="recall rate" />
        ${TRENDS.map(([k, what]) => html`<${Fit} s=${a[k]} what=${what} />`)}</div></div>`)}</div>`;
  }

  function DashboardsPage({ which }) {
    const q = query();
    const params = { since: q.since, until: q.until, tenant: q.tenant, bucket: q.bucket };
    const res = useApi('/dashboards/' + which, params);
    const facets = useApi('/runs/facets', {});
    const [form, setForm] = useState({ since: q.since || '', until: q.until || '', tenant: q.tenant || '', bucket: q.bucket || '' });
    const field = (k) => ({ value: form[k], onInput: (e) => setForm(Object.assign({}, form, { [k]: e.target.value })) });
    const apply = (e) => { e.preventDefault(); setQuery(form, false); };
    const quick = (secs) => { const until = new Date(); const since = new Date(until.getTime() - secs * 1000); setQuery({ since: isoLocal(since), until: isoLocal(until) }, false); };
    const tenants = (facets.data && facets.data.tenants) || [];
    const Tab = { cost: CostTab, tools: ToolsTab, violations: ViolationsTab, learning: LearningTab }[which];
    return html`<main>
      <h1>Dashboards</h1>
      <div class="tabs">${TABS.map(([k, label]) => html`<a href=${ROOT + '/dashboards/' + k + qs({ since: q.since, until: q.until, tenant: q.tenant, bucket: q.bucket })} class=${k === which ? 'on' : ''} onClick=${(e) => { e.preventDefault(); kit.navigate(e.currentTarget.pathname + e.currentTarget.search); }}>${label}</a>`)}</div>
      <form class="bar" onSubmit=${apply}>
        <label>From (UTC) <input name="since" type="datetime-local" step="1" ...${field('since')} /></label>
        <label>To (UTC) <input name="until" type="datetime-local" step="1" ...${field('until')} /></label>
        ${QUICK.map(([l, s]) => html`<button type="button" onClick=${() => quick(s)}>last ${l}</button>`)}
        <button type="button" onClick=${() => setQuery({ since: '', until: '' }, false)}>all time</button>
        <label>Tenant <select name="tenant" ...${field('tenant')}><option value="">all</option>${tenants.map((t) => html`<option value=${t}>${t}</option>`)}</select></label>
        <label>Bucket <select name="bucket" ...${field('bucket')}>${BUCKETS.map(([v, l]) => html`<option value=${v}>${l}</option>`)}</select></label>
        <button class="primary" type="submit">Apply</button>
        ${res.data ? html`<span class="dim">bucket ${res.data.bucket_s} s</span>` : null}
      </form>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${res.data && res.data.dashboard === which ? html`<${Tab} d=${res.data} />` : res.loading ? html`<p class="loading">running the dashboard's queries…</p>` : null}
    </main>`;
  }

  return {
    nav: { label: 'Dashboards', path: '/dashboards/cost', key: 'dashboards' },
    route: (seg) => {
      if (seg[0] !== 'dashboards') return null;
      const which = seg[1] || 'cost';
      return ['dashboards', html`<${DashboardsPage} key=${which} which=${which} />`];
    },
  };
});
