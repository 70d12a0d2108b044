/* Memory search (/memory): `agentstream recall` in the browser. The situation and the
 * filters live in the URL; each episode links to its agent, run and events. */
(window.AgentStreamPages = window.AgentStreamPages || []).push(function (kit) {
  'use strict';
  const { html, useState, A, useApi, query, setQuery, fmtTime, shortId, Badge, Err, href } = kit;

  function MemoryPage() {
    const q = query();
    const res = useApi(q.q ? '/memory/recall' : null, { q: q.q, k: q.k, agent: q.agent, tool: q.tool, outcome: q.outcome, since: q.since, tenant: q.tenant });
    const [form, setForm] = useState({ q: q.q || '', k: q.k || '10', agent: q.agent || '', tool: q.tool || '', outcome: q.outcome || '', since: q.since || '', tenant: q.tenant || '' });
    const field = (k) => ({ value: form[k], onInput: (e) => setForm(Object.assign({}, form, { [k]: e.target.value })) });
    const go = (e) => { e.preventDefault(); setQuery(form, false); };
    const d = res.data;
    return html`<main>
      <h1>Memory search <span class="dim">what would an agent recall?</span></h1>
      <form class="bar" onSubmit=${go}>
        <label>Situation <input name="q" size="60" placeholder="describe the situation, e.g. the deploy failed with a timeout" ...${field('q')} /></label>
        <label>Agent <input name="agent" size="12" ...${field('agent')} /></label>
        <label>Tool <input name="tool" size="12" ...${field('tool')} /></label>
        <label>Outcome <select name="outcome" ...${field('outcome')}><option value="">any</option><option value="success">success</option><option value="failure">failure</option></select></label>
        <label>Since <input name="since" size="10" placeholder="7d or ISO time" ...${field('since')} /></label>
        <label>Tenant <input name="tenant" size="10" ...${field('tenant')} /></label>
        <label>k <input name="k" type="number" min="1" max="100" style=${{ width: '56px' }} ...${field('k')} /></label>
        <button class="primary" type="submit">Recall</button>
      </form>
      ${res.error ? html`<${Err} error=${res.error} />` : null}
      ${!q.q ? html`<p class="dim">Recall finds the remembered episodes (situation → action → outcome → lesson) nearest to a situation, as agents see them through <code>recall()</code>.</p>` : null}
      ${res.loading && q.q ? html`<p class="loading">recalling (the first search loads the embedding model)…</p>` : null}
      ${d ? html`<p class="dim" data-found=${d.episodes.length}>${d.episodes.length} episodes, nearest first</p>
        <div class="panel">${d.episodes.map((e) => html`<div class="episode" data-episode=${e.episode_id}>
          <div class="meta"><span>similarity <span class="sim" data-sim=${e.similarity}>${e.similarity.toFixed(3)}</span></span><${Badge} s=${e.outcome} />
            <span>agent <${A} to=${href.agent(e.agent_id)}>${e.agent_id}<//></span><span>tool <b>${e.tool}</b></span>
            ${e.run_id ? html`<span>run <${A} to=${href.run(e.run_id, { event: e.event_ids[0] })} cls="mono">${e.run_id}<//></span>` : null}
            <span>${fmtTime(Date.parse(e.time) * 1000)}</span><span>${e.tenant}</span></div>
          <div><b>situation</b> ${e.situation}</div>
          <div><b>action</b> ${e.action}${e.expected ? html` <span class="dim">expected ${e.expected}</span>` : null}</div>
          <div><b>result</b> ${e.result}${e.actual ? html` <span class="dim">actual ${e.actual}</span>` : null}</div>
          ${e.lesson ? html`<div class="lesson" data-lesson="1"><b>lesson</b> ${e.lesson}</div>` : null}
          <div class="dim">events ${e.event_ids.map((id, i) => html`${i ? ' · ' : ''}<${A} to=${href.event(id, { mode: 'why' })} cls="mono">${shortId(id)}<//>`)}</div>
        </div>`)}</div>` : null}
    </main>`;
  }

  return {
    nav: { label: 'Memory', path: '/memory', key: 'memory' },
    route: (seg) => (seg[0] === 'memory' ? ['memory', html`<${MemoryPage} key=${location.search} />`] : null),
  };
});
