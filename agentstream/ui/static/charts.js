/* Charts for the live view, dashboards and SQL workspace: uPlot (vendored), loaded on first
 * use. window.AgentStreamCharts(kit) returns { Chart, pivot, loadScripts }. */
(function () {
  'use strict';
  const COLORS = ['#2563eb', '#ea8a1a', '#16a34a', '#dc2626', '#7c3aed', '#0891b2', '#ca8a04', '#db2777', '#4b5563', '#65a30d'];
  const loaded = {};
  function loadScripts(srcs) {
    const key = srcs.join(' ');
    if (!loaded[key]) {
      loaded[key] = srcs.reduce((p, src) => p.then(() => new Promise((ok, bad) => {
        const s = document.createElement('script'); s.src = src; s.onload = ok; s.onerror = () => bad(new Error('cannot load ' + src)); document.head.appendChild(s);
      })), Promise.resolve());
    }
    return loaded[key];
  }
  const chartJs = () => (document.body.dataset.chartJs || '').split(' ').filter(Boolean);

  /* rows [{k: .., x: .., v: ..}] -> {x: sorted unique xs, series: [{label, values}]} */
  function pivot(rows, xKey, seriesKey, valueKey, fill) {
    const num = (v) => (typeof v === 'string' && isNaN(Number(v)) ? Date.parse(v) / 1000 : Number(v));  // ISO times -> epoch s
    rows = rows.map((r) => Object.assign({}, r, { [xKey]: num(r[xKey]) }));
    const xs = Array.from(new Set(rows.map((r) => r[xKey]))).sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const by = new Map();
    for (const r of rows) {
      const k = seriesKey ? String(r[seriesKey]) : valueKey;
      if (!by.has(k)) by.set(k, xs.map(() => (fill === undefined ? null : fill)));
      by.get(k)[at.get(r[xKey])] = r[valueKey] === null || r[valueKey] === undefined ? null : Number(r[valueKey]);
    }
    return { x: xs, series: Array.from(by.entries()).sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([label, values]) => ({ label, values })) };
  }

  /* stacked bars: each series becomes the running total up to it, drawn tallest first so
   * every band stays visible; the legend keeps each series' own name and colour */
  function stack(series) {
    const run = series[0].values.map(() => 0);
    const out = series.map((s, i) => ({ label: s.label, color: i, values: s.values.map((v, j) => (run[j] += v || 0)) }));
    return out.reverse();
  }

  window.AgentStreamCharts = function (kit) {
    const { html, useEffect, useRef } = kit;
    /* x: numbers (epoch seconds when time), series: [{label, values}], kind: line|bar */
    /* categories: labels for x = 0, 1, 2... (a text column), drawn under each point */
    function Chart({ x, series, kind, height, time, label, name, categories }) {
      if (kind === 'bar' && series.length > 1) series = stack(series);
      const box = useRef(null);
      const plot = useRef(null);
      const shape = JSON.stringify([series.map((s) => s.label), kind, time, height, categories || null]);
      useEffect(() => {
        let alive = true;
        loadScripts(chartJs()).then(() => {
          if (!alive || !box.current) return;
          const uPlot = window.uPlot;
          const opts = {
            width: Math.max(300, box.current.clientWidth || 600),
            height: height || 220,
            scales: { x: { time: !!time } },
            legend: { live: false },
            series: [{ label: time ? 'time' : 'x' }].concat(series.map((s, i) => ({
              label: s.label,
              stroke: COLORS[(s.color === undefined ? i : s.color) % COLORS.length],
              width: kind === 'bar' ? 1 : 2,
              fill: kind === 'bar' ? COLORS[(s.color === undefined ? i : s.color) % COLORS.length] + 'cc' : undefined,
              paths: kind === 'bar' ? uPlot.paths.bars({ size: [0.6, 60] }) : undefined,
              points: { show: x.length <= 60 },
            }))),
            axes: [
              categories
                ? {
                    splits: () => categories.map((_, i) => i),
                    values: (u, splits) => splits.map((v) => String(categories[v] ?? '')),
                  }
                : {},
              { label: label || '', size: 60 },
            ],
          };
          if (plot.current) plot.current.destroy();
          plot.current = new uPlot(opts, [x].concat(series.map((s) => s.values)), box.current);
        });
        return () => { alive = false; if (plot.current) { plot.current.destroy(); plot.current = null; } };
      }, [shape]);
      useEffect(() => {  // new data, same shape: update in place (live view: once a second)
        if (plot.current) plot.current.setData([x].concat(series.map((s) => s.values)));
      }, [JSON.stringify([x, series.map((s) => s.values)])]);
      return html`<div class="chart" ref=${box} data-chart=${name || ''} data-series=${series.length} data-points=${x.length}></div>`;
    }
    return { Chart, pivot, loadScripts, COLORS };
  };
})();
