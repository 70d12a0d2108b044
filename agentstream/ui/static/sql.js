/* The SQL workspace (/sql): CodeMirror 5 (vendored, loaded on this page only), the schema and
 * the named queries in a side panel, results as a sortable, paged grid with the server's
 * times, a chart of any columns, CSV/Parquet downloads and a shareable URL
 * (?sql=… or ?named=…&param=k=v). Statements run through /api/v1/sql: the read path of
 * `agentstream query`. Cancel aborts the request; the server kills the statement. */
(window.AgentStreamPages = window.AgentStreamPages || []).push(function (kit) {
  'use strict';
  const { html, useState, useEffect, useRef, useApi, fmtInt, Err, ROOT, navigate } = kit;
  const { Chart, loadScripts } = window.AgentStreamCharts(kit);
  const PAGE = 100;

  function urlParams() { return new URLSearchParams(location.search); }
  /* the statement of the URL: {sql} or {named, params: ["k=v", …]} */
  function fromUrl() {
    const p = urlParams();
    return { sql: p.get('sql'), named: p.get('named'), params: p.getAll('param') };
  }
  function apiQuery(stmt, extra) {
    const p = new URLSearchParams();
    if (stmt.named) p.set('named', stmt.named); else p.set('sql', stmt.sql || '');
    for (const kv of stmt.params || []) if (kv.trim()) p.append('param', kv.trim());
    for (const [k, v] of Object.entries(extra || {})) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
    return p.toString();
  }

  function Editor({ value, onChange, onRun }) {
    const box = useRef(null);
    const cm = useRef(null);
    const [ready, setReady] = useState(false);
    useEffect(() => {
      const srcs = (document.body.dataset.editorJs || '').split(' ').filter(Boolean);
      let alive = true;
      loadScripts(srcs).then(() => {
        if (!alive || !box.current) return;
        const ta = box.current.querySelector('textarea');
        cm.current = window.CodeMirror.fromTextArea(ta, {
          mode: 'text/x-sql', lineNumbers: true, viewportMargin: Infinity, indentUnit: 4,
          extraKeys: { 'Ctrl-Enter': () => onRun(), 'Cmd-Enter': () => onRun() },
        });
        cm.current.on('change', (c) => onChange(c.getValue()));
        setReady(true);
      }, () => setReady(false));
      return () => { alive = false; if (cm.current) { cm.current.toTextArea(); cm.current = null; } };
    }, []);
    useEffect(() => { if (cm.current && cm.current.getValue() !== value) cm.current.setValue(value); }, [value]);
    return html`<div class="editor panel" ref=${box} data-editor=${ready ? 'codemirror' : 'textarea'}>
      <textarea aria-label="SQL" value=${value} onInput=${(e) => onChange(e.target.value)}
        onKeyDown=${(e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); onRun(); } }}></textarea></div>`;
  }

  function Side({ onOpen }) {
    const schema = useApi('/sql/schema', {});
    const named = useApi('/sql/named', {});
    return html`<aside class="side panel">
      <h3 class="pad">Named queries</h3>
      ${named.data ? named.data.queries.map((q) => html`<details data-named=${q.name}><summary><b>${q.name}</b></summary>
        <div class="dim">${q.title}</div>
        ${Object.keys(q.params).length ? html`<div class="dim">params: ${Object.entries(q.params).map(([k, p]) => k + ' (' + p.type + ', default ' + (p.default === '' ? "''" : p.default) + ')').join(', ')}</div>` : null}
        <pre>${q.sql}</pre><button data-open=${q.name} onClick=${() => onOpen(q)}>open</button></details>`) : null}
      <h3 class="pad">Schema</h3>
      ${schema.error ? html`<${Err} error=${schema.error} />` : null}
      ${schema.data ? schema.data.tables.map((t) => html`<details data-table=${t.name}><summary>${t.name} <span class="dim">${t.columns.length}</span></summary>
        ${t.columns.map((c) => html`<div class="col">${c.name} <span>${c.type}</span></div>`)}</details>`) : null}
    </aside>`;
  }

  function ResultChart({ res }) {
    const cols = res.columns.map((c) => c.name);
    const numeric = res.columns.filter((c) => /int|float|double|decimal/.test(c.type)).map((c) => c.name);
    // default x: a time column, else the first text column whose values differ, else the first
    const timeCol = res.columns.find((c) => /timestamp|date/.test(c.type));
    const textCol = res.columns.find((c, i) => !numeric.includes(c.name) && new Set(res.rows.map((r) => r[i])).size > 1);
    const x0 = (timeCol || textCol || res.columns[0]).name;
    const [x, setX] = useState(x0);
    const [ys, setYs] = useState(numeric.filter((c) => c !== x0).slice(0, 1));
    const [kind, setKind] = useState(timeCol ? 'line' : 'bar');
    const xi = cols.indexOf(x);
    const xType = (res.columns[xi] || {}).type || '';
    const isTime = /timestamp|date/.test(xType);
    const xsRaw = res.rows.map((r) => r[xi]);
    const numericX = isTime || /int|float|double|decimal/.test(xType);
    const xs = xsRaw.map((v, i) => (isTime ? Date.parse(v) / 1000 : numericX ? Number(v) : i));
    const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
    const series = ys.filter((y) => cols.includes(y)).map((y) => ({ label: y, values: order.map((i) => { const v = res.rows[i][cols.indexOf(y)]; return v === null ? null : Number(v); }) }));
    return html`<div class="panel pad" data-result-chart="1">
      <div class="bar"><label>x <select data-chart-x value=${x} onChange=${(e) => setX(e.target.value)}>${cols.map((c) => html`<option value=${c}>${c}</option>`)}</select></label>
        <label>y ${numeric.map((c) => html`<label class="dim"><input type="checkbox" data-chart-y=${c} checked=${ys.includes(c)} onChange=${(e) => setYs(e.target.checked ? ys.concat([c]) : ys.filter((v) => v !== c))} />${c}</label>`)}</label>
        <label>kind <select data-chart-kind value=${kind} onChange=${(e) => setKind(e.target.value)}><option value="line">line</option><option value="bar">bar</option></select></label>
        ${numericX ? null : html`<span class="dim">x is text: one point per row, in row order</span>`}</div>
      ${series.length ? html`<${Chart} name="result" kind=${kind} time=${isTime} x=${order.map((i) => xs[i])} series=${series} categories=${numericX ? null : order.map((i) => String(xsRaw[i]))} />` : html`<p class="dim">pick a numeric column for y</p>`}
      <p class="dim">charts the ${fmtInt(res.rows.length)} rows of this page</p></div>`;
  }

  function SqlPage() {
    const init = fromUrl();
    const [text, setText] = useState(init.sql || '');
    const [named, setNamed] = useState(init.named);
    const [params, setParams] = useState((init.params || []).join('\n'));
    const [res, setRes] = useState(null);
    const [err, setErr] = useState(null);
    const [busy, setBusy] = useState(null);
    const [showChart, setShowChart] = useState(false);
    const abort = useRef(null);
    const namedList = useApi('/sql/named', {});
    useEffect(() => {  // a named query in the URL: show its text in the editor
      if (named && namedList.data && !text) {
        const q = namedList.data.queries.find((x) => x.name === named);
        if (q) {
          setText(q.sql);
          if (!params) setParams(Object.entries(q.params).map(([k, p]) => k + '=' + p.default).join('\n'));
        }
      }
    }, [namedList.data]);
    const stmt = () => ({ sql: named ? null : text, named, params: params.split('\n').filter((l) => l.trim()) });

    async function fetchPage(extra, fresh) {
      if (abort.current) abort.current.abort();
      const ctl = new AbortController();
      abort.current = ctl;
      setBusy(Date.now()); setErr(null);
      try {
        const r = await fetch(ROOT + '/api/v1/sql?' + apiQuery(stmt(), Object.assign({ limit: PAGE }, extra, fresh ? { fresh: 'true' } : {})), { signal: ctl.signal, credentials: 'same-origin' });
        const body = await r.json();
        if (!r.ok) { setErr(body); setRes(null); } else setRes(body);
      } catch (e) {
        if (e.name === 'AbortError') setErr({ error: 'cancelled: the statement was stopped (the server killed it when this page went away)', kind: 'cancelled' });
        else setErr({ error: String(e), kind: 'network' });
      } finally { if (abort.current === ctl) { abort.current = null; setBusy(null); } }
    }
    function run() {
      const s = stmt();
      const p = new URLSearchParams();
      if (s.named) p.set('named', s.named); else p.set('sql', s.sql);
      for (const kv of s.params) p.append('param', kv);
      history.replaceState(null, '', ROOT + '/sql?' + p.toString());  // shareable
      fetchPage({ offset: 0 }, true);
    }
    const cancel = () => { if (abort.current) abort.current.abort(); };
    const open = (q) => {
      setNamed(q.name); setText(q.sql);
      setParams(Object.entries(q.params).map(([k, p]) => k + '=' + p.default).join('\n'));
      setRes(null); setErr(null);
    };
    const edit = (v) => { setText(v); if (named) { const q = namedList.data && namedList.data.queries.find((x) => x.name === named); if (!q || q.sql !== v) setNamed(null); } };
    useEffect(() => { if (init.sql || init.named) fetchPage({ offset: 0 }, false); }, []);
    const sortBy = (c) => fetchPage({ offset: 0, sort: c, desc: res && res.sort === c ? String(!res.desc) : 'false' });
    const page = (off) => fetchPage({ offset: off, sort: res.sort, desc: res.sort ? String(res.desc) : undefined });
    const dl = (fmt) => ROOT + '/api/v1/sql/download?' + apiQuery(stmt(), { format: fmt });
    return html`<main>
      <h1>SQL workspace <span class="dim">read-only, the same path as <code>agentstream query</code></span></h1>
      <div class="sqlws">
        <${Side} onOpen=${open} />
        <section>
          ${named ? html`<p class="dim" data-named-active=${named}>named query <b>${named}</b> (edit the text to run it as plain SQL)</p>` : null}
          <${Editor} value=${text} onChange=${edit} onRun=${run} />
          <div class="bar params"><label>Parameters (NAME=VALUE, one a line, as <code>--param</code>)</label></div>
          <textarea class="params" data-params rows="2" value=${params} onInput=${(e) => setParams(e.target.value)}></textarea>
          <div class="bar">
            <button class="primary" data-action="run" onClick=${run} disabled=${busy !== null}>Run (Ctrl+Enter)</button>
            <button data-action="cancel" onClick=${cancel} disabled=${busy === null}>Cancel</button>
            ${busy !== null ? html`<span class="loading" data-running="1">running…</span>` : null}
            ${res ? html`<a href=${dl('csv')} download="result.csv" data-download="csv">CSV</a> <a href=${dl('parquet')} download="result.parquet" data-download="parquet">Parquet</a>
              <button onClick=${() => setShowChart(!showChart)} class=${showChart ? 'on' : ''} data-action="chart">Chart</button>` : null}
          </div>
          ${err ? html`<p class="error" data-error-kind=${err.kind}>${err.error}</p>` : null}
          ${res ? html`<div class="stats" data-result-total=${res.total}><span><b>${fmtInt(res.total)}</b> rows</span>
              <span>engine <b data-engine-ms>${res.engine_ms === null ? '–' : res.engine_ms + ' ms'}</b></span><span>server <b data-server-ms>${res.server_ms} ms</b></span>
              ${res.rows_read !== null ? html`<span>rows read <b>${fmtInt(res.rows_read)}</b></span>` : null}
              <span>${res.total ? (res.offset + 1) + '–' + (res.offset + res.rows.length) : '0'} shown</span>
              <button disabled=${res.offset === 0} onClick=${() => page(Math.max(0, res.offset - PAGE))}>‹ Prev</button>
              <button disabled=${res.offset + res.rows.length >= res.total} onClick=${() => page(res.offset + PAGE)}>Next ›</button></div>
            ${showChart ? html`<${ResultChart} res=${res} />` : null}
            <div class="panel result-scroll"><table class="grid" data-result="1"><thead><tr>${res.columns.map((c) => html`<th class=${'sort' + (res.sort === c.name ? ' sorted' : '')} title=${c.type} onClick=${() => sortBy(c.name)}>${c.name}${res.sort === c.name ? (res.desc ? ' ↓' : ' ↑') : ''}</th>`)}</tr></thead>
              <tbody>${res.rows.map((r) => html`<tr>${r.map((v) => html`<td class=${typeof v === 'number' ? 'num' : ''}>${v === null ? html`<span class="dim">NULL</span>` : typeof v === 'object' ? JSON.stringify(v) : String(v)}</td>`)}</tr>`)}</tbody></table></div>` : null}
        </section>
      </div>
    </main>`;
  }

  return {
    nav: { label: 'SQL', path: '/sql', key: 'sql' },
    route: (seg) => (seg[0] === 'sql' ? ['sql', html`<${SqlPage} key="sql" />`] : null),
  };
});
