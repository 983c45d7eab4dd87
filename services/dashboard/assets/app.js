// Péage dashboard: plain JavaScript, no build step. Every number comes from the control API
// with the session cookie; the server decides what this session may read. Text is always set
// with textContent (never innerHTML), so nothing from the API can become markup.
'use strict';

(function () {
  const main = document.getElementById('main');
  const nav = document.getElementById('nav');
  const whoBox = document.getElementById('who');
  const toastBox = document.getElementById('toast');
  let session = null;
  const charts = [];

  // ---------- small helpers ----------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // Replaces el's children, leaving out null and undefined as h() does: replaceChildren would
  // write them as the text "null".
  function fill(el, ...children) {
    el.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  }

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = { accept: 'application/json' };
    const method = opts.method || 'GET';
    if (method !== 'GET') headers['x-peage-csrf'] = '1';
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    });
    const type = r.headers.get('content-type') || '';
    const data = type.includes('json') ? await r.json() : await r.text();
    if (r.status === 401 && !opts.allow401) {
      location.assign('/sign-in');
      throw new ApiError(401, 'Your session has ended: sign in again.');
    }
    if (!r.ok) throw new ApiError(r.status, (data && (data.detail || data.title)) || r.statusText);
    return data;
  }

  function toast(text) {
    toastBox.textContent = text;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { toastBox.textContent = ''; }, 5000);
  }

  function fail(where, e) {
    where.replaceChildren(h('div', { class: 'error', role: 'alert', text: 'Could not load this: ' + e.message }));
  }

  const dec = (s) => Number(s || 0); // display only: money stays a decimal string from the API
  // Sums of money stay exact: decimal strings as integers of 10^-6 (BigInt), back to a string.
  function exact(s) {
    const m = String(s || '0').match(/^(-?)(\d+)(?:\.(\d{0,6}))?/);
    if (!m) return 0n;
    const v = BigInt(m[2]) * 1000000n + BigInt((m[3] || '').padEnd(6, '0'));
    return m[1] ? -v : v;
  }
  function fromExact(v) {
    const neg = v < 0n, a = neg ? -v : v;
    return `${neg ? '-' : ''}${a / 1000000n}.${String(a % 1000000n).padStart(6, '0')}`;
  }
  function money(amount, currency) {
    if (amount === undefined || amount === null || amount === '') return '—';
    try {
      return new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(dec(amount));
    } catch (_) { return amount + ' ' + currency; }
  }
  // Unit prices keep every decimal they have (0.005 € a call is not 0.01 €).
  function unitMoney(amount, currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: 'currency', currency, maximumFractionDigits: 10 }).format(dec(amount));
    } catch (_) { return amount + ' ' + currency; }
  }
  const num = (s) => new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 }).format(dec(s));
  function when(t, tz, withTime) {
    if (!t) return '—';
    const o = { year: 'numeric', month: 'short', day: 'numeric', timeZone: tz || undefined };
    if (withTime) { o.hour = '2-digit'; o.minute = '2-digit'; }
    return new Intl.DateTimeFormat(undefined, o).format(new Date(t));
  }
  const badge = (text, cls) => h('span', { class: 'badge ' + (cls || text), text });

  function table(headers, rows, caption) {
    return h('div', { class: 'table-wrap' },
      h('table', {},
        caption ? h('caption', { class: 'visually-hidden', text: caption }) : null,
        h('thead', {}, h('tr', {}, headers.map((x) => {
          const [label, cls] = Array.isArray(x) ? x : [x, ''];
          return h('th', { scope: 'col', class: cls, text: label });
        }))),
        h('tbody', {}, rows)));
  }

  function destroyCharts() { while (charts.length) charts.pop().destroy(); }

  // ---------- navigation ----------

  function go(path) { history.pushState({}, '', path); navigated = true; render(); }
  document.addEventListener('click', (ev) => {
    const a = ev.target.closest && ev.target.closest('a[data-nav]');
    if (!a || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    go(a.getAttribute('href'));
  });
  window.addEventListener('popstate', render);
  const link = (href, text, attrs) => h('a', Object.assign({ href, 'data-nav': true, text }, attrs || {}));

  function drawNav() {
    const items = session.role === 'partner'
      ? [['/app', 'Usage'], ['/app/keys', 'API keys'], ['/app/invoices', 'Invoices'], ['/app/apis', 'APIs']]
      : [['/app', 'Partners'], ['/app/invoices', 'Invoices'], ['/app/apis', 'APIs'], ...(mayAct() ? [['/app/webhooks', 'Webhooks']] : [])];
    const here = location.pathname.replace(/\/$/, '') || '/app';
    nav.replaceChildren(...items.map(([href, text]) => {
      const current = href === '/app' ? (here === '/app' || here.startsWith('/app/partners')) : here.startsWith(href);
      return link(href, text, { 'aria-current': current ? 'page' : null });
    }));
    const name = session.role === 'partner' ? session.partner_name
      : session.email ? `${session.name} (${session.role})` : (session.name || session.role);
    whoBox.replaceChildren(
      h('span', { text: name }),
      h('button', { type: 'button', class: 'secondary', onclick: signOut, text: 'Sign out' }));
  }

  async function signOut() {
    await fetch('/auth/sign-out', { method: 'POST', credentials: 'same-origin', headers: { 'x-peage-csrf': '1' } });
    location.assign('/sign-in');
  }

  let navigated = false; // the first page keeps the browser's focus order (skip link first)
  function page(title, ...content) {
    document.title = title + ' · Péage';
    fill(main, h('h1', { text: title }), ...content);
    // After an in-app navigation, move focus to the new content, as a page load would.
    if (navigated) main.focus({ preventScroll: true });
  }

  // ---------- sign in ----------

  async function signInPage() {
    nav.replaceChildren();
    whoBox.replaceChildren();
    document.title = 'Sign in · Péage';
    const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    const input = h('input', { id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, value: fromLink || '' });
    const intro = h('p', { class: 'muted', text: fromLink
      ? 'Your sign-in link is ready. It works once and expires 15 minutes after it was made.'
      : 'Paste the sign-in link or token your account manager sent you. Links work once and expire after 15 minutes.' });
    const submit = h('p', {}, h('button', { type: 'submit', text: 'Continue' }));
    const form = h('form', { class: 'panel signin' },
      h('h1', { text: 'Sign in to Péage' }),
      intro,
      h('label', { for: 'token', class: fromLink ? 'visually-hidden' : 'field', text: 'Sign-in link or token' }),
      fromLink ? null : input,
      status,
      submit);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let token = (fromLink || input.value).trim();
      const m = token.match(/token=([^&\s]+)/);
      if (m) token = m[1];
      status.replaceChildren(h('p', { class: 'muted', text: 'Signing in…' }));
      try {
        await api('/auth/sign-in', { method: 'POST', body: { token }, allow401: true });
        history.replaceState({}, '', '/app');
        await start();
      } catch (e) {
        // A spent link says so alone: no "ready", no button that cannot work.
        if (e.status === 401 && fromLink) {
          intro.remove();
          submit.remove();
        }
        status.replaceChildren(h('div', { class: 'error', role: 'alert', text: e.status === 401
          ? 'This link was already used or has expired. Ask for a new one.'
          : 'Sign-in failed: ' + e.message }));
      }
    });
    main.replaceChildren(form);
    (fromLink ? form.querySelector('button') : input).focus();
  }

  // ---------- partner usage ----------

  // The gateway's refusals (docs/gateway.md, "Refusals"), in words.
  const REFUSALS = {
    'rate-limited': 'Over the rate limit',
    'quota-exceeded': 'Hard quota used up',
    'quota-unavailable': 'Quota could not be checked',
    'not-entitled': 'Not included in your plan',
    'insufficient-scope': 'Token scope does not cover the API',
    'version-retired': 'API version retired',
    'no-sandbox': 'No sandbox for this API',
    'request-too-large': 'Request body too large',
    'bad-request-body': 'Request body could not be read',
    'bad-graphql-request': 'GraphQL request not understood',
  };

  const PALETTE = ['#3730a3', '#0f766e', '#b45309', '#be123c', '#4d7c0f', '#7e22ce', '#0369a1', '#a16207'];

  async function usagePage(partnerId) {
    const [partner, upcoming, quotas, forecast, alerts, plan] = await Promise.all([
      api(`/v1/partners/${encodeURIComponent(partnerId)}`),
      api(`/v1/partners/${encodeURIComponent(partnerId)}/invoices/upcoming`).catch((e) => ({ error: e.message })),
      api(`/v1/partners/${encodeURIComponent(partnerId)}/quotas`).catch(() => ({ quotas: [] })),
      api(`/v1/partners/${encodeURIComponent(partnerId)}/invoices/forecast`).catch(() => null),
      api(`/v1/partners/${encodeURIComponent(partnerId)}/alerts`).catch((e) => ({ error: e.message, alerts: [] })),
      api(`/v1/partners/${encodeURIComponent(partnerId)}/plan`).catch(() => null),
    ]);
    const inv = upcoming.invoice;
    const tz = inv ? inv.timezone : 'UTC';
    const cards = h('div', { class: 'cards' });
    if (inv) {
      const start = new Date(inv.period.start), end = new Date(inv.period.end), now = new Date();
      const elapsed = Math.min(1, Math.max(0.0001, (now - start) / (end - start)));
      const usageLines = inv.lines.filter((l) => l.meter);
      cards.append(
        h('div', { class: 'card' },
          h('div', { class: 'label', text: 'Running cost this period' }),
          h('div', { class: 'value', id: 'running-cost', text: money(inv.total, inv.currency) }),
          h('div', { class: 'sub', text: `${when(inv.period.start, tz)} – ${when(new Date(end - 1), tz)} (${tz}), tax included` })),
        h('div', { class: 'card' },
          h('div', { class: 'label', text: 'Plan' }),
          h('div', { class: 'value', id: 'plan-name', text: plan ? plan.name : partner.subscription.plan_id }),
          h('div', { class: 'sub', id: 'plan-price', text: plan ? planPrice(plan) : '' })),
        h('div', { class: 'card' },
          h('div', { class: 'label', text: 'Period elapsed' }),
          h('div', { class: 'value', text: Math.round(elapsed * 100) + ' %' }),
          h('div', { class: 'sub', text: usageLines.length ? pace(usageLines, elapsed, quotas.quotas || []) : 'no metered charges yet' })));
      if (forecast) {
        cards.append(h('div', { class: 'card' },
          h('div', { class: 'label', text: 'Forecast at this pace' }),
          h('div', { class: 'value', id: 'forecast', text: money(forecast.invoice.total, forecast.invoice.currency) }),
          h('div', { class: 'sub', text: forecastNote(forecast.invoice, quotas.quotas || []) })));
      }

    } else {
      cards.append(h('div', { class: 'card' }, h('div', { class: 'label', text: 'Running cost' }), h('div', { class: 'sub', text: upcoming.error || 'No period running' })));
    }

    // Chart controls.
    const sel = (id, label, options, value) => h('label', { for: id }, label,
      h('select', { id, name: id }, options.map(([v, t]) => h('option', { value: v, selected: v === value, text: t }))));
    const browserTz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const tzOptions = [[tz, `${tz} (billing)`]];
    if (browserTz && browserTz !== tz) tzOptions.push([browserTz, `${browserTz} (this device)`]);
    if (tz !== 'UTC' && browserTz !== 'UTC') tzOptions.push(['UTC', 'UTC']);
    const controls = h('form', { class: 'controls', 'aria-label': 'Chart options' },
      sel('range', 'Range', [['period', 'This billing period'], ['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days'], ['custom', 'Custom…']], 'period'),
      h('label', { for: 'from', class: 'custom', hidden: true }, 'From', h('input', { type: 'date', id: 'from' })),
      h('label', { for: 'to', class: 'custom', hidden: true }, 'To (inclusive)', h('input', { type: 'date', id: 'to' })),
      sel('granularity', 'Granularity', [['day', 'Day'], ['hour', 'Hour']], 'day'),
      sel('by', 'Split by', [['meter', 'Meter'], ['api', 'API'], ['version', 'Version'], ['operation', 'Operation']], 'meter'),
      sel('meter', 'Meter', [], ''),
      sel('tz', 'Time zone', tzOptions, tz),
      sel('env', 'Traffic', [['live', 'Live'], ['sandbox', 'Sandbox']], 'live'));
    const chartBox = h('div');
    const seriesCharts = [];
    charts.push({ destroy: () => { while (seriesCharts.length) seriesCharts.pop().destroy(); } });
    const dataTable = h('details', {}, h('summary', { text: 'Show the chart as a table' }));
    const chartNote = h('p', { class: 'muted', id: 'chart-note' });
    const chartPanel = h('section', { class: 'panel', 'aria-labelledby': 'usage-h' },
      h('h2', { id: 'usage-h', text: 'Usage over time' }), controls, chartBox, chartNote, dataTable);

    // The calls the gateway refused this period (never billed, so in no chart above).
    const refusedPanel = h('section', { class: 'panel', 'aria-labelledby': 'refused-h' }, h('h2', { id: 'refused-h', text: 'Refused calls this period' }));
    const refusedBody = h('div', { id: 'refused' }, h('p', { class: 'muted', text: 'Loading…' }));
    refusedPanel.append(refusedBody);
    let refusedAsked = 0;
    async function loadRefused(env) {
      const mine = ++refusedAsked;
      try {
        const u = await api(`/v1/partners/${encodeURIComponent(partnerId)}/usage?env=${env}`);
        if (mine !== refusedAsked) return;
        const total = u.refused.reduce((n, r) => n + r.calls, 0);
        refusedBody.replaceChildren(total
          ? h('div', {},
            h('p', { id: 'refused-total', text: `${num(total)} ${env} call(s) refused this period: not served, not billed.` }),
            table(['Why', 'Status', ['Calls', 'num']], u.refused.map((r) => h('tr', {},
              h('td', { text: REFUSALS[r.refusal] || r.refusal }), h('td', { class: 'mono', text: String(r.status) }), h('td', { class: 'num', text: num(r.calls) }))), 'Refused calls by reason'))
          : h('p', { class: 'muted', id: 'refused-total', text: `No ${env} call was refused this period.` }));
      } catch (e) {
        if (mine === refusedAsked) fail(refusedBody, e);
      }
    }

    const quotaPanel = h('section', { class: 'panel', 'aria-labelledby': 'quota-h' }, h('h2', { id: 'quota-h', text: 'Quotas' }));
    drawQuotas(quotaPanel, quotas.quotas || [], tz);

    const linesPanel = h('section', { class: 'panel', 'aria-labelledby': 'lines-h' }, h('h2', { id: 'lines-h', text: 'This period so far' }));
    if (inv) {
      linesPanel.append(invoiceTable(inv, 'Upcoming invoice lines', false));
    }

    // Finance: the usage event types this partner's services sent (POST /v1/events), metered
    // or not, so a meter that shows nothing can be told from events that never came.
    let eventsPanel = null;
    if (session.role !== 'partner') {
      eventsPanel = h('section', { class: 'panel', 'aria-labelledby': 'event-types-h' }, h('h2', { id: 'event-types-h', text: 'Usage events received this period' }));
      try {
        const usage = await api(`/v1/partners/${encodeURIComponent(partnerId)}/usage`);
        const types = usage.event_types || [];
        eventsPanel.append(types.length
          ? table(['Event type', ['Events', 'num'], 'Latest event'],
            types.map((t) => h('tr', {}, h('td', { class: 'mono', text: t.type }), h('td', { class: 'num', text: num(t.events) }), h('td', { text: when(t.last_time, tz, true) }))),
            'Usage event types received')
          : h('p', { class: 'muted', text: 'No usage events this period.' }));
      } catch (e) {
        eventsPanel.append(h('p', { class: 'error', role: 'alert', text: 'Could not load the event types: ' + e.message }));
      }
    }

    const previewBox = session.role === 'partner' ? null : previewPanel(partner);
    const couponBox = couponPanel(partner, () => render());
    const profileBox = session.role === 'partner' ? null : profilePanel(partner);
    const creditBox = session.role === 'partner' ? null : creditPanel(partner, plan);
    // Partners see a change coming to their plan; staff see the plan panel always.
    const planBox = session.role === 'partner' && !partner.pending_change ? null : planPanel(partner, () => render());

    const title = session.role === 'partner' ? 'Usage' : partner.name;
    const lead = session.role === 'partner' ? null : h('p', {}, link('/app', '← All partners'), ' · ', h('span', { class: 'mono', text: partner.id }));
    // A hard quota used up says so at the top: its calls are being refused.
    const blocked = (quotas.quotas || []).filter((x) => x.decision === 'hard_blocked' && !x.shadow)
      .map((q) => h('div', { class: 'error', role: 'alert', text: `Your ${q.meter} quota is used up (${num(q.used)} of ${num(q.limit)}): calls are refused with 429 until ${when(q.resets_at, tz, true)}.` }));
    // Each alert's highest threshold reached this period, at the top.
    const reachedNotes = (alerts.alerts || []).filter((a) => a.reached.length).map((a) => {
      const n = a.reached[0];
      return h('div', { class: 'notice alert-reached', role: 'status', text:
        `Alert: ${alertWhat(a)} reached ${n.threshold} % of its ${alertAmount(a.budget, a)} budget (${alertAmount(n.value, a)}) on ${when(n.reached_at, tz, true)}.` });
    });
    const alertBox = alertPanel(partner, alerts, tz, () => render());
    const sheet = plan ? planSheet(plan) : null;
    const choose = session.role === 'partner' ? choosePlanPanel(partner, tz, () => render()) : null;
    billedMeters = plan ? new Set(plan.charges.map((c) => c.meter).concat(plan.charges.map((c) => c.events_meter).filter(Boolean))) : null;
    page(title, lead, ...blocked, ...reachedNotes, cards, planBox, chartPanel, refusedPanel, quotaPanel, alertBox, linesPanel, sheet, choose, couponBox, profileBox, creditBox, previewBox, eventsPanel);

    const field = (id) => controls.querySelector('#' + id);
    field('range').addEventListener('change', () => {
      const custom = field('range').value === 'custom';
      controls.querySelectorAll('.custom').forEach((el) => { el.hidden = !custom; });
      if (custom && !field('from').value) {
        const d = new Date();
        field('to').value = d.toISOString().slice(0, 10);
        d.setDate(d.getDate() - 6);
        field('from').value = d.toISOString().slice(0, 10);
      }
    });
    let lastSeries = null;
    let asked = 0;
    async function refresh() {
      const q = new URLSearchParams({ granularity: field('granularity').value, by: field('by').value, tz: field('tz').value, env: field('env').value });
      loadRefused(field('env').value);
      const range = field('range').value, now = Date.now();
      if (range === '24h') { q.set('from', new Date(now - 864e5).toISOString()); q.set('to', new Date(now).toISOString()); }
      if (range === '7d') { q.set('from', new Date(now - 7 * 864e5).toISOString()); q.set('to', new Date(now).toISOString()); }
      if (range === '30d') { q.set('from', new Date(now - 30 * 864e5).toISOString()); q.set('to', new Date(now).toISOString()); }
      if (range === 'custom') {
        if (!field('from').value || !field('to').value) return;
        q.set('from', new Date(field('from').value + 'T00:00:00Z').toISOString());
        q.set('to', new Date(new Date(field('to').value + 'T00:00:00Z').getTime() + 864e5).toISOString());
      }
      chartNote.textContent = 'Loading…';
      const mine = ++asked; // answers can arrive out of order: only the latest one is drawn
      try {
        const data = await api(`/v1/partners/${encodeURIComponent(partnerId)}/usage/series?${q}`);
        if (mine !== asked) return;
        lastSeries = data.usage;
        drawSeries();
        chartNote.append(` · updated ${new Date().toLocaleTimeString()}, every 30 s while shown`);
      } catch (e) {
        if (mine === asked) chartNote.textContent = 'Could not load usage: ' + e.message;
      }
    }
    function drawSeries() {
      const u = lastSeries;
      const meters = [...new Set(u.series.map((s) => s.meter))];
      const meterSel = field('meter');
      const keep = meterSel.value;
      meterSel.replaceChildren(...meters.map((m) => h('option', { value: m, text: m, selected: m === keep })));
      meterSel.parentElement.hidden = u.split_by === 'meter';
      meterSel.disabled = u.split_by === 'meter';
      const shown = u.split_by === 'meter' ? u.series : u.series.filter((s) => s.meter === (meterSel.value || meters[0]));
      const labels = u.buckets.map((b) => when(b, u.time_zone, u.granularity === 'hour'));
      while (seriesCharts.length) seriesCharts.pop().destroy();
      chartBox.replaceChildren();
      // By meter: one small chart per meter, each on its own scale. Otherwise one stacked chart
      // of the chosen meter, a colour per API, version or operation.
      // The meters the plan bills come first; the others say they cost nothing and are grey.
      const billed = (m) => !billedMeters || billedMeters.has(m);
      const groups = u.split_by === 'meter'
        ? shown.map((s) => [s.meter, [s]]).sort((a, b) => Number(billed(b[0])) - Number(billed(a[0])))
        : [[meterSel.value || meters[0], shown]];
      chartBox.className = groups.length > 1 ? 'chart-grid' : '';
      groups.forEach(([meter, sets], g) => {
        const free = !billed(meter);
        const canvas = h('canvas', { role: 'img', id: g === 0 ? 'usage-chart' : `usage-chart-${g}`, 'aria-label': `${meter} per ${u.granularity}${u.split_by === 'meter' ? '' : ', split by ' + u.split_by}${free ? ', not billed on this plan' : ''}; the numbers are in the table below` });
        chartBox.append(h('figure', { class: 'chart-box' + (free ? ' unbilled' : '') }, groups.length > 1 ? h('figcaption', {}, meter, free ? h('span', { class: 'muted', text: ' · not billed on this plan' }) : null) : null, h('div', { class: 'chart-canvas' }, canvas)));
        if (!window.Chart) return;
        seriesCharts.push(new window.Chart(canvas, {
          type: 'bar',
          data: {
            labels,
            datasets: sets.map((s, i) => ({
              label: u.split_by === 'meter' ? s.meter : s.key,
              data: s.values.map(Number),
              backgroundColor: free ? '#9ca3af' : PALETTE[(u.split_by === 'meter' ? g : i) % PALETTE.length],
            })),
          },
          options: {
            maintainAspectRatio: false, animation: false,
            interaction: { mode: 'index', intersect: false },
            scales: { x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true } }, y: { stacked: true, beginAtZero: true, title: { display: true, text: meter } } },
            plugins: { legend: { display: u.split_by !== 'meter', position: 'bottom' } },
          },
        }));
      });
      if (!window.Chart) chartBox.append(h('p', { class: 'muted', text: 'The chart library did not load; the numbers are in the table below.' }));
      const total = (s) => num(s.total);
      chartNote.textContent = shown.length
        ? shown.map((s) => `${u.split_by === 'meter' ? s.meter : s.key}: ${total(s)}`).join(' · ') + (u.not_charted.length ? ` — not charted (not additive): ${u.not_charted.join(', ')}` : '')
        : 'No usage in this range.';
      dataTable.replaceChildren(h('summary', { text: 'Show the chart as a table' }),
        table([u.granularity === 'hour' ? 'Hour' : 'Day', ...shown.map((s) => [u.split_by === 'meter' ? s.meter : s.key, 'num'])],
          labels.map((l, i) => h('tr', {}, h('th', { scope: 'row', text: l }), shown.map((s) => h('td', { class: 'num', text: num(s.values[i]) })))),
          'Usage per bucket'));
    }
    controls.addEventListener('change', (ev) => { if (ev.target.id === 'meter') drawSeries(); else refresh(); });
    await refresh();
    // Live: calls show within seconds, so the chart and the running cost follow by themselves
    // while the page is visible (and stop when another page replaces this one).
    const costBox = main.querySelector('#running-cost');
    const timer = setInterval(async () => {
      if (document.visibilityState !== 'visible' || !main.contains(chartBox)) return;
      await refresh();
      if (costBox) {
        try {
          const up = await api(`/v1/partners/${encodeURIComponent(partnerId)}/invoices/upcoming`);
          costBox.textContent = money(up.invoice.total, up.invoice.currency);
        } catch (_) { /* keep the last figure */ }
      }
    }, 30000);
    charts.push({ destroy: () => clearInterval(timer) });
  }

  // Staff: the partner's plan and the change waiting for them; finance and admins schedule a
  // change (now, at the end of the period, or on a date) or cancel the pending one.
  function planPanel(partner, after) {
    const pid = encodeURIComponent(partner.id);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'plan-h' }, h('h2', { id: 'plan-h', text: 'Plan' }));
    const sub = partner.subscription;
    panel.append(h('p', {}, 'On ', h('strong', { text: sub.plan_id }), ` since ${when(sub.started_at, undefined, true)} (version ${sub.plan_version.slice(0, 12)}).`));
    const pending = partner.pending_change;
    const pendingBox = h('div', { id: 'pending-change' });
    if (pending) {
      pendingBox.append(h('div', { class: 'notice' },
        h('p', {}, badge('pending', 'warn'), ' Moves to ', h('strong', { text: pending.plan_id }), ` on ${when(pending.at, undefined, true)}`, h('span', { class: 'muted', text: ` · scheduled${byWhom(pending.scheduled_by)} ${when(pending.scheduled_at, undefined, true)}` })),
        mayAct() ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Cancel the change to ${pending.plan_id}`, text: 'Cancel this change', onclick: async () => {
          if (!confirm(`Cancel the move to ${pending.plan_id}? The partner stays on ${sub.plan_id}.`)) return;
          try {
            await api(`/v1/partners/${pid}/plan-changes/${encodeURIComponent(pending.id)}`, { method: 'DELETE' });
            toast('Change cancelled.');
            await after();
          } catch (e) { toast('Could not cancel: ' + e.message); }
        } }) : null));
    } else {
      pendingBox.append(h('p', { class: 'muted', text: 'No plan change is pending.' }));
    }
    panel.append(pendingBox);
    if (!mayAct()) return panel;
    const planSel = h('select', { id: 'change-plan', name: 'plan' });
    const whenSel = h('select', { id: 'change-at', name: 'at' },
      h('option', { value: 'next_period', text: 'At the end of this period' }),
      h('option', { value: 'now', text: 'Now' }),
      h('option', { value: 'date', text: 'On a date…' }));
    const date = h('input', { type: 'date', id: 'change-date', name: 'date' });
    const dateLabel = h('label', { for: 'change-date', hidden: true }, 'Date (the partner\u2019s midnight)', date);
    whenSel.addEventListener('change', () => { dateLabel.hidden = whenSel.value !== 'date'; });
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    const form = h('form', { class: 'controls', 'aria-label': 'Change plan' },
      h('label', { for: 'change-plan' }, 'New plan', planSel),
      h('label', { for: 'change-at' }, 'When', whenSel),
      dateLabel,
      h('button', { type: 'submit', text: 'Change plan' }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const at = whenSel.value === 'date' ? date.value : whenSel.value;
      if (!at) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: 'Choose a date.' })); return; }
      try {
        const p = await api(`/v1/partners/${pid}/subscription`, { method: 'PUT', body: { plan: planSel.value, at } });
        toast(p.pending_change ? `Scheduled: ${p.pending_change.plan_id} from ${when(p.pending_change.at, undefined, true)}.` : `Now on ${p.subscription.plan_id}.`);
        await after();
      } catch (e) {
        status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message }));
      }
    });
    panel.append(h('h3', { text: 'Change plan' }), form, status);
    api('/v1/plans').then((plans) => {
      planSel.replaceChildren(...plans.plans.filter((p) => p.id !== sub.plan_id).map((p) => h('option', {
        value: p.id, text: `${p.name || p.id} (${p.currency}, ${p.period.every === 'year' ? 'yearly' : 'monthly'})`,
      })));
    }).catch((e) => fail(status, e));
    return panel;
  }

  // "20" (per cent, as typed) to "0.20", digit by digit: a rate never goes through a float.
  function percentToFraction(text) {
    const m = /^(\d+)(?:\.(\d+))?$/.exec(text.trim());
    if (!m) return null;
    const int = m[1].padStart(3, '0');
    return `${int.slice(0, -2).replace(/^0+(?=\d)/, '')}.${int.slice(-2)}${m[2] || ''}`;
  }
  const couponDiscount = (c) => c.discount.type === 'percent'
    ? `${num(dec(c.discount.rate) * 100)} % off` : `${money(c.discount.amount, c.discount.currency)} off`;
  const couponLasts = (c) => c.duration.every === 'once' ? 'this period'
    : c.duration.every === 'forever' ? 'every period' : `${c.duration.count} periods`;

  // A partner's coupons: staff attach, remove and create them; a partner reads its own.
  function couponPanel(partner, after) {
    const pid = encodeURIComponent(partner.id);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'coupons-h' }, h('h2', { id: 'coupons-h', text: 'Coupons' }));
    const list = h('div', { id: 'partner-coupons' }, h('p', { class: 'muted', text: 'Loading…' }));
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    const problem = (e) => status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message }));
    panel.append(list, status);
    api(`/v1/partners/${pid}/coupons`).then(({ coupons: all }) => {
      // Partners see the coupons they have; staff see the history too.
      const coupons = mayAct() ? all : all.filter((pc) => !pc.removed_at);
      if (!coupons.length) {
        if (!mayAct()) { panel.hidden = true; return; }
        list.replaceChildren(h('p', { class: 'muted', text: 'No coupon.' }));
        return;
      }
      list.replaceChildren(table(['Code', 'Discount', 'For', ['Attached', 'hide-narrow'], 'State', ''], coupons.map((pc) => h('tr', {},
        h('td', { class: 'mono', text: pc.coupon.code }),
        h('td', { text: couponDiscount(pc.coupon) }),
        h('td', { text: couponLasts(pc.coupon) }),
        h('td', { class: 'hide-narrow', text: when(pc.attached_at, undefined, true) }),
        h('td', {}, pc.removed_at ? badge('removed', 'void') : badge('active', 'ok')),
        h('td', {}, mayAct() && !pc.removed_at ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove coupon ${pc.coupon.code}`, text: 'Remove', onclick: async () => {
          if (!confirm(`Remove ${pc.coupon.code}? It stops discounting this period; finalized invoices keep theirs.`)) return;
          try {
            await api(`/v1/partners/${pid}/coupons/${encodeURIComponent(pc.id)}`, { method: 'DELETE' });
            toast(`Coupon ${pc.coupon.code} removed.`);
            await after();
          } catch (e) { problem(e); }
        } }) : null))), 'Coupons of this partner'));
    }).catch((e) => fail(status, e));
    if (!mayAct()) return panel;

    const pick = h('select', { id: 'coupon-code', name: 'code' });
    const attach = h('form', { class: 'controls', 'aria-label': 'Attach a coupon' },
      h('label', { for: 'coupon-code' }, 'Coupon', pick),
      h('button', { type: 'submit', text: 'Attach' }));
    attach.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!pick.value) { problem(new Error('Create a coupon first.')); return; }
      try {
        await api(`/v1/partners/${pid}/coupons`, { method: 'POST', body: { code: pick.value } });
        toast(`Coupon ${pick.value} attached: it discounts this period and those its duration covers.`);
        await after();
      } catch (e) { problem(e); }
    });
    api('/v1/coupons').then(({ coupons }) => {
      pick.replaceChildren(...coupons.map((c) => h('option', { value: c.code, text: `${c.code}: ${couponDiscount(c)}, ${couponLasts(c)}` })));
    }).catch((e) => fail(status, e));

    const code = h('input', { id: 'new-coupon-code', name: 'code', required: true, pattern: '[A-Za-z0-9_\\-]{1,64}', autocomplete: 'off' });
    const name = h('input', { id: 'new-coupon-name', name: 'name', required: true });
    const kind = h('select', { id: 'new-coupon-kind', name: 'kind' },
      h('option', { value: 'percent', text: 'Percentage' }), h('option', { value: 'amount', text: 'Fixed amount' }));
    const value = h('input', { id: 'new-coupon-value', name: 'value', required: true, inputmode: 'decimal' });
    const every = h('select', { id: 'new-coupon-every', name: 'every' },
      h('option', { value: 'once', text: 'This period' }), h('option', { value: 'periods', text: 'Several periods' }), h('option', { value: 'forever', text: 'Every period' }));
    const count = h('input', { id: 'new-coupon-count', name: 'count', type: 'number', min: '1', value: '3' });
    const countLabel = h('label', { for: 'new-coupon-count', hidden: true }, 'Periods', count);
    every.addEventListener('change', () => { countLabel.hidden = every.value !== 'periods'; });
    const create = h('form', { class: 'controls', 'aria-label': 'Create a coupon' },
      h('label', { for: 'new-coupon-code' }, 'Code', code),
      h('label', { for: 'new-coupon-name' }, 'Name', name),
      h('label', { for: 'new-coupon-kind' }, 'Discount', kind),
      h('label', { for: 'new-coupon-value' }, 'Value (% or amount)', value),
      h('label', { for: 'new-coupon-every' }, 'For', every),
      countLabel,
      h('button', { type: 'submit', text: 'Create' }));
    create.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let discount;
      if (kind.value === 'percent') {
        const rate = percentToFraction(value.value);
        if (!rate) { problem(new Error('Write the percentage as a number, for example 20 or 12.5.')); return; }
        discount = { type: 'percent', rate };
      } else {
        const plans = await api('/v1/plans').catch(() => ({ plans: [] }));
        const plan = plans.plans.find((p) => p.id === partner.subscription.plan_id);
        discount = { type: 'amount', amount: value.value.trim(), currency: plan ? plan.currency : 'EUR' };
      }
      const duration = every.value === 'periods' ? { every: 'periods', count: Number(count.value) } : { every: every.value };
      try {
        const made = await api('/v1/coupons', { method: 'POST', body: { code: code.value.trim(), name: name.value.trim(), discount, duration } });
        toast(`Coupon ${made.code} created.`);
        pick.append(h('option', { value: made.code, text: `${made.code}: ${couponDiscount(made)}, ${couponLasts(made)}` }));
        pick.value = made.code;
        create.reset();
        countLabel.hidden = true;
      } catch (e) { problem(e); }
    });
    panel.append(h('h3', { text: 'Attach a coupon' }), attach, h('h3', { text: 'Create a coupon' }), create);
    return panel;
  }

  // Finance: what this partner would pay this period on another plan, or under another
  // catalog version, priced from the same usage beside the current draft. Nothing is saved.
  function previewPanel(partner) {
    const pid = encodeURIComponent(partner.id);
    const planSel = h('select', { id: 'preview-plan', name: 'plan' });
    const catalogSel = h('select', { id: 'preview-catalog', name: 'catalog' });
    const out = h('div', { id: 'preview-result', 'aria-live': 'polite' });
    const form = h('form', { class: 'controls', 'aria-label': 'Invoice preview' },
      h('label', { for: 'preview-plan' }, 'Plan', planSel),
      h('label', { for: 'preview-catalog' }, 'Catalog', catalogSel),
      h('button', { type: 'submit', text: 'Preview' }));
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'preview-h' },
      h('h2', { id: 'preview-h', text: 'What this partner would pay on another plan' }),
      h('p', { class: 'muted', text: 'Prices this period\u2019s usage so far under the plan and catalog chosen, beside the current draft. Nothing is saved.' }),
      form, out);
    (async () => {
      try {
        const [plans, versions] = await Promise.all([api('/v1/plans'), api('/v1/catalog/versions')]);
        planSel.replaceChildren(...plans.plans.map((p) => h('option', {
          value: p.id, selected: p.id === partner.subscription.plan_id,
          text: `${p.name || p.id} (${p.currency}${p.id === partner.subscription.plan_id ? ', current' : ''})`,
        })));
        catalogSel.replaceChildren(h('option', { value: '', text: `In force (${versions.in_force.slice(0, 12)})` }),
          ...versions.versions.filter((v) => v.version !== versions.in_force).map((v) => h('option', {
            value: v.version, text: `${v.version.slice(0, 12)}, accepted ${when(v.accepted_at, undefined, true)}`,
          })));
      } catch (e) { fail(out, e); }
    })();
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams({ plan: planSel.value });
      if (catalogSel.value) q.set('catalog', catalogSel.value);
      out.replaceChildren(h('p', { class: 'muted', text: 'Pricing…' }));
      try {
        const p = await api(`/v1/partners/${pid}/invoices/preview?${q}`);
        const cur = p.current.invoice, pre = p.preview.invoice;
        const side = (title, inv, id) => h('div', { class: 'compare-side', id },
          h('h3', { text: title }),
          h('p', { class: 'muted', text: `${when(inv.period.start, inv.timezone)} – ${when(new Date(new Date(inv.period.end) - 1), inv.timezone)}` }),
          invoiceTable(inv, title, true));
        const sameCurrency = cur.currency === pre.currency;
        const delta = sameCurrency ? dec(pre.amount_due) - dec(cur.amount_due) : null;
        out.replaceChildren(
          h('p', { id: 'preview-summary', text: sameCurrency
            ? `On ${p.plan_id}, this period would come to ${money(pre.amount_due, pre.currency)} due, ${delta === 0 ? 'the same as' : money(Math.abs(delta), pre.currency) + (delta > 0 ? ' more than' : ' less than')} the current draft (${money(cur.amount_due, cur.currency)}).`
            : `On ${p.plan_id}, this period would come to ${money(pre.amount_due, pre.currency)} due; the current draft is ${money(cur.amount_due, cur.currency)}.` }),
          h('div', { class: 'compare' },
            side('Current draft', cur, 'preview-current'),
            side(`On ${p.plan_id} (catalog ${p.catalog_version.slice(0, 12)})`, pre, 'preview-other')));
      } catch (e) { fail(out, e); }
    });
    return panel;
  }

  // Where the first metered charge is heading by the period's end at this pace, no further
  // than a hard quota lets it.
  function pace(usageLines, elapsed, quotas) {
    const meter = usageLines[0].meter;
    const used = usageLines.filter((l) => l.meter === meter).reduce((s, l) => s + dec(l.quantity), 0);
    const hard = quotas.find((q) => q.meter === meter && q.kind === 'hard' && !q.shadow);
    const projected = Math.round(used / elapsed);
    if (hard && projected >= dec(hard.limit)) return `at this pace, the ${num(dec(hard.limit))} ${meter} of your hard quota before period end`;
    return `at this pace, about ${num(projected)} ${meter} by period end`;
  }

  // The meters the partner's plan prices, for the usage charts (null: not known).
  let billedMeters = null;

  const periodWord = (p) => (p.period && p.period.every === 'year' ? 'year' : 'month');

  // A plan in one line: its base fee and what its charges are on.
  function planPrice(plan) {
    const fee = dec(plan.base_fee) ? `${money(plan.base_fee, plan.currency)} a ${periodWord(plan)}` : 'no base fee';
    const on = [...new Set(plan.charges.map((c) => c.meter))];
    return on.length ? `${fee} + ${on.join(', ')} as used` : fee;
  }

  // One charge's price in words: its model, tiers and free allowance.
  function chargePrice(c, currency) {
    const unit = (v) => unitMoney(v, currency);
    const upTo = (t, prev) => t.up_to === null || t.up_to === undefined ? `above ${num(prev)}` : `${prev ? num(prev) + ' – ' : 'up to '}${num(t.up_to)}`;
    const tiers = (list, each) => {
      let prev = 0;
      return list.map((t) => {
        const text = `${upTo(t, prev)}: ${each(t)}${t.flat_fee ? ` + ${money(t.flat_fee, currency)}` : ''}`;
        prev = t.up_to;
        return text;
      }).join('; ');
    };
    let text;
    switch (c.model) {
      case 'flat': text = `${money(c.amount, currency)} a period`; break;
      case 'per_unit': text = `${unit(c.unit_price)} each`; break;
      case 'graduated': text = 'each unit at its tier\'s price: ' + tiers(c.tiers, (t) => `${unit(t.unit_price)} each`); break;
      case 'volume': text = 'every unit at the price of the tier reached: ' + tiers(c.tiers, (t) => `${unit(t.unit_price)} each`); break;
      case 'graduated_percentage': text = tiers(c.tiers, (t) => `${num(dec(t.rate) * 100)} %`); break;
      case 'percentage': text = `${num(dec(c.rate) * 100)} %${c.fixed_fee ? ` + ${unit(c.fixed_fee)} per event` : ''}${c.min_per_event ? `, at least ${unit(c.min_per_event)}` : ''}${c.max_per_event ? `, at most ${unit(c.max_per_event)}` : ''} per event`; break;
      default: text = c.model;
    }
    return dec(c.free) ? `first ${num(c.free)} free, then ${text}` : text;
  }

  // A partner moves itself to a self-serve plan: each option with its price and when it takes
  // effect; a quote (the period with the move beside the period now) before confirming.
  function choosePlanPanel(partner, tz, after) {
    const pid = encodeURIComponent(partner.id);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'choose-plan-h', hidden: true }, h('h2', { id: 'choose-plan-h', text: 'Change your plan' }));
    const out = h('div', { id: 'plan-quote', role: 'status', 'aria-live': 'polite' });
    api(`/v1/partners/${pid}/plan-options`).then(({ options }) => {
      if (!options.length || partner.pending_change) return;
      panel.hidden = false;
      panel.append(table(['Plan', 'Price', 'When', ''], options.map((o) => h('tr', {},
        h('td', { text: o.plan.name }),
        h('td', { text: planPrice(o.plan) }),
        h('td', { text: o.direction === 'upgrade' ? 'at once, prorated' : `at the end of this period (${when(o.effective_at, tz)})` }),
        h('td', {}, h('button', { type: 'button', class: 'secondary', text: 'See the price', 'aria-label': `See the price of ${o.plan.name}`, onclick: () => quote(o) })))), 'Plans you may choose'), out);
    }).catch((e) => { panel.hidden = false; fail(out, e); });
    async function quote(o) {
      out.replaceChildren(h('p', { class: 'muted', text: 'Pricing…' }));
      try {
        const q = await api(`/v1/partners/${pid}/plan-options/${encodeURIComponent(o.plan.id)}/quote`, { method: 'POST' });
        const cur = q.current.invoice, next = q.with_change.invoice;
        const upgrade = q.direction === 'upgrade';
        const confirm = h('button', { type: 'button', text: upgrade ? `Upgrade to ${o.plan.name} now` : `Move to ${o.plan.name} on ${when(q.effective_at, tz)}`, onclick: async () => {
          try {
            await api(`/v1/partners/${pid}/plan-options/${encodeURIComponent(o.plan.id)}`, { method: 'POST' });
            toast(upgrade ? `You are on ${o.plan.name} from now.` : `You move to ${o.plan.name} on ${when(q.effective_at, tz)}.`);
            await after();
          } catch (e) { out.append(h('p', { class: 'error', role: 'alert', text: e.message })); }
        } });
        fill(out,
          h('p', { id: 'quote-summary', text: upgrade
            ? `With ${o.plan.name} from now, this period would come to ${money(next.total, next.currency)} instead of ${money(cur.total, cur.currency)} so far: each plan's base fee for its part of the period, usage at each plan's prices.`
            : `This period stays on your plan (${money(cur.total, cur.currency)} so far); ${o.plan.name} starts on ${when(q.effective_at, tz)}.` }),
          upgrade ? invoiceTable(next, `This period with ${o.plan.name}`, false) : null,
          h('p', {}, confirm));
      } catch (e) { fail(out, e); }
    }
    return panel;
  }

  // The plan sheet: every price, quota and limit of the partner's plan.
  function planSheet(plan) {
    const rows = [];
    if (dec(plan.base_fee)) rows.push(['Base fee', `${money(plan.base_fee, plan.currency)} a ${periodWord(plan)}`]);
    for (const c of plan.charges) rows.push([c.meter, chargePrice(c, plan.currency)]);
    if (plan.minimum_commitment) rows.push(['Minimum', `${money(plan.minimum_commitment, plan.currency)} a ${periodWord(plan)} in usage charges`]);
    for (const q of plan.quotas || []) rows.push([`${q.meter} quota`, `${num(q.limit)} a ${periodWord(plan)}, ${q.kind}${q.shadow ? ' (watched, not enforced)' : ''}`]);
    if (plan.rate_limit) rows.push(['Rate limit', `${num(plan.rate_limit.per_second)} calls a second per key, bursts of ${num(plan.rate_limit.burst)}`]);
    if (plan.tax) rows.push(['Tax', `${plan.tax.label} ${num(dec(plan.tax.rate) * 100)} %`]);
    if (plan.features && plan.features.length) rows.push(['Features', plan.features.join(', ')]);
    return h('section', { class: 'panel', 'aria-labelledby': 'plan-sheet-h' },
      h('h2', { id: 'plan-sheet-h', text: `Your plan: ${plan.name}` }),
      table(['Item', 'Price'], rows.map(([k, v]) => h('tr', {}, h('th', { scope: 'row', text: k }), h('td', { text: v }))), 'Plan prices'));
  }

  // What a forecast assumes, and whether a hard quota stops it.
  function forecastNote(inv, quotas) {
    const capped = quotas.filter((q) => q.kind === 'hard' && !q.shadow).find((q) =>
      inv.lines.filter((l) => l.meter === q.meter).reduce((s, l) => s + dec(l.quantity), 0) >= dec(q.limit));
    return capped
      ? `by period end, tax included; your hard ${capped.meter} quota stops it at ${num(capped.limit)}`
      : 'by period end at the pace so far, tax included';
  }

  const alertWhat = (a) => a.metric === 'spend' ? 'your spend' : `your ${a.meter} usage`;
  const alertAmount = (v, a) => a.metric === 'spend' ? money(v, a.unit) : `${num(v)} ${a.meter}`;

  // Spend and usage alerts: the list, where each stands, and (for those who may) add and delete.
  function alertPanel(partner, alerts, tz, after) {
    const pid = encodeURIComponent(partner.id);
    const may = session.role === 'partner' || mayAct();
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'alerts-h' }, h('h2', { id: 'alerts-h', text: 'Alerts' }));
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    const problem = (e) => status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message }));
    if (alerts.error) {
      panel.append(h('p', { class: 'error', role: 'alert', text: 'Could not load the alerts: ' + alerts.error }));
      return panel;
    }
    const list = alerts.alerts || [];
    panel.append(list.length
      ? table(['Watches', 'Budget', 'Now', 'Reached this period', ''], list.map((a) => h('tr', {},
        h('td', { text: a.metric === 'spend' ? 'Spend' : `Usage of ${a.meter}` }),
        h('td', { text: `${alertAmount(a.budget, a)} at ${a.thresholds.map((t) => t + ' %').join(', ')}` }),
        h('td', { text: `${alertAmount(a.value, a)} (${Math.floor(dec(a.value) / dec(a.budget) * 100)} %)` }),
        h('td', { text: a.reached.length ? a.reached.map((n) => `${n.threshold} % on ${when(n.reached_at, tz, true)}`).join('; ') : 'none' }),
        h('td', {}, may ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Delete the alert on ${a.metric === 'spend' ? 'spend' : a.meter}`, text: 'Delete', onclick: async () => {
          try {
            await api(`/v1/partners/${pid}/alerts/${encodeURIComponent(a.id)}`, { method: 'DELETE' });
            toast('Alert deleted.');
            await after();
          } catch (e) { problem(e); }
        } }) : null))), 'Alerts of this partner')
      : h('p', { class: 'muted', text: 'No alert. Set a budget to be told, by webhook and here, when spend or usage reaches it.' }));
    panel.append(status);
    if (!may) return panel;
    const metric = h('select', { id: 'alert-metric', name: 'metric' },
      h('option', { value: 'spend', text: 'Spend (running cost)' }), h('option', { value: 'usage', text: 'Usage of a meter' }));
    const meter = h('select', { id: 'alert-meter', name: 'meter' });
    const meterLabel = h('label', { for: 'alert-meter', hidden: true }, 'Meter', meter);
    const budget = h('input', { id: 'alert-budget', name: 'budget', inputmode: 'decimal', required: true, size: 10 });
    const thresholds = h('input', { id: 'alert-thresholds', name: 'thresholds', value: '50, 80, 100', size: 12 });
    metric.addEventListener('change', () => { meterLabel.hidden = metric.value !== 'usage'; });
    // The catalog's meters, as the partner's usage report lists them.
    api(`/v1/partners/${pid}/usage`).then((u) => {
      meter.replaceChildren(...u.meters.map((m) => h('option', { value: m.meter, text: m.meter })));
    }).catch((e) => problem(e));
    const form = h('form', { class: 'controls', 'aria-label': 'Add an alert' },
      h('label', { for: 'alert-metric' }, 'Watch', metric),
      meterLabel,
      h('label', { for: 'alert-budget' }, 'Budget', budget),
      h('label', { for: 'alert-thresholds' }, 'Thresholds (%)', thresholds),
      h('button', { type: 'submit', text: 'Add the alert' }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { metric: metric.value, budget: budget.value.trim(),
        thresholds: thresholds.value.split(/[\s,;%]+/).filter(Boolean).map(Number) };
      if (metric.value === 'usage') body.meter = meter.value;
      try {
        await api(`/v1/partners/${pid}/alerts`, { method: 'POST', body });
        toast('Alert added: each threshold is notified once per period.');
        await after();
      } catch (e) { problem(e); }
    });
    panel.append(form);
    return panel;
  }

  function drawQuotas(panel, quotas, tz) {
    if (!quotas.length) {
      panel.append(h('p', { class: 'muted', text: 'Your plan has no quotas: every call is allowed and billed.' }));
      return;
    }
    const grid = h('div', { class: 'gauges' });
    panel.append(grid);
    for (const q of quotas) {
      const pct = Math.round(dec(q.utilization) * 1000) / 10;
      const canvas = h('canvas', { 'aria-hidden': 'true' });
      const near = Math.round(dec(q.near_limit_at || '0.8') * 100);
      const consequence = q.shadow
        ? `Shadow limit (${q.kind}): not enforced yet. Calls past it are served and counted, so the limit can be watched before it applies.`
        : q.kind === 'hard'
          ? 'Hard limit: at the limit, calls are refused with 429 until the period resets.'
          : 'Soft limit: calls above the limit are still served, billed as overage, and you are notified.';
      const state = q.decision === 'hard_blocked' ? badge('blocked', 'bad')
        : q.decision === 'soft_exceeded' ? badge('over limit', 'warn')
          : q.decision === 'shadow_exceeded' ? badge('over shadow limit', 'warn')
            : q.near_limit ? badge(`near limit (${near} %)`, 'warn') : badge('ok', 'ok');
      grid.append(h('div', { class: 'gauge card' },
        h('div', { class: 'ring' }, canvas, h('div', { class: 'pct', text: pct + ' %' })),
        h('div', {},
          h('h3', {}, q.meter + ' ', q.shadow ? badge('shadow', 'shadow') : badge(q.kind, q.kind), ' ', state),
          // Left is the limit less what was used (gateways' unspent leases are not used).
          h('div', { class: 'quota-count', text: `${num(q.used)} of ${num(q.limit)} used; ${num(Math.max(0, dec(q.limit) - dec(q.used)))} left` }),
          h('div', { class: 'muted', text: consequence }),
          h('div', { class: 'muted', text: 'Resets ' + when(q.resets_at, tz, true) }))));
      if (window.Chart) {
        const used = Math.min(100, pct);
        charts.push(new window.Chart(canvas, {
          type: 'doughnut',
          data: { datasets: [{ data: [used, 100 - used], backgroundColor: [q.shadow ? '#6b7280' : pct >= 100 ? '#991b1b' : pct >= near ? '#b45309' : '#3730a3', '#e5e7eb'], borderWidth: 0 }] },
          options: { rotation: -90, circumference: 180, cutout: '70%', maintainAspectRatio: false, animation: false, plugins: { tooltip: { enabled: false }, legend: { display: false } } },
        }));
      }
    }
  }

  // ---------- keys ----------

  async function keysPage(partnerId) {
    const secretBox = h('div');
    const list = h('div');
    const envSel = h('select', { id: 'new-env' }, h('option', { value: 'live', text: 'Live' }), h('option', { value: 'test', text: 'Sandbox (test)' }));
    const nameIn = h('input', { id: 'new-name', name: 'name', maxlength: 60, placeholder: 'production, CI…', autocomplete: 'off' });
    const overlapSel = h('select', { id: 'overlap' },
      [['0', 'stops at once'], ['1', 'works 1 more hour'], ['24', 'works 24 more hours'], ['168', 'works 7 more days']].map(([v, t]) => h('option', { value: v, text: t })));
    const issue = h('form', { class: 'controls' },
      h('label', { for: 'new-env' }, 'Environment', envSel),
      h('label', { for: 'new-name' }, 'Name', nameIn),
      h('button', { type: 'submit', text: 'Issue a new key' }));
    const rotation = h('form', { class: 'controls', 'aria-label': 'Rotation' },
      h('label', { for: 'overlap' }, 'On rotation, the old key', overlapSel));
    issue.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const k = await api(`/v1/partners/${encodeURIComponent(partnerId)}/keys`, { method: 'POST', body: { env: envSel.value, name: nameIn.value } });
        showSecret(k, 'New key issued');
        await load();
      } catch (e) { toast('Could not issue a key: ' + e.message); }
    });
    function showSecret(k, title) {
      const code = h('code', { id: 'secret', text: k.secret });
      secretBox.replaceChildren(h('div', { class: 'secret', role: 'alert' },
        h('h2', { text: title }),
        h('p', { text: 'Copy this secret now: it is shown once and Péage keeps only its hash.' }),
        code,
        h('div', { class: 'actions' },
          h('button', { type: 'button', onclick: async () => { try { await navigator.clipboard.writeText(k.secret); toast('Copied.'); } catch (_) { toast('Select the secret and copy it.'); } }, text: 'Copy' }),
          h('button', { type: 'button', class: 'secondary', onclick: () => secretBox.replaceChildren(), text: 'I have stored it' }))));
      secretBox.querySelector('button').focus();
    }
    async function load() {
      const data = await api(`/v1/partners/${encodeURIComponent(partnerId)}/keys`);
      const keys = data.keys.slice().sort((a, b) => (a.revoked_at ? 1 : 0) - (b.revoked_at ? 1 : 0) || b.created_at.localeCompare(a.created_at));
      list.replaceChildren(keys.length
        ? table(['Key', ['Environment', 'hide-narrow'], ['Created', 'hide-narrow'], 'Last used', 'Status', 'Actions'], keys.map(keyRow), 'API keys')
        : h('p', { class: 'muted', text: 'No keys yet.' }));
    }
    function keyRow(k) {
      const rotate = async () => {
        const hours = Number(overlapSel.value);
        if (!confirm(`Rotate ${k.prefix}…? A new key is issued and this one ${hours ? `keeps working for ${hours} hour(s), then stops` : 'stops working at once'}.`)) return;
        try {
          showSecret(await api(`/v1/keys/${encodeURIComponent(k.key_id)}/rotate?overlap_hours=${hours}`, { method: 'POST' }), 'Key rotated');
          await load();
        } catch (e) { toast('Could not rotate: ' + e.message); }
      };
      const revoke = async () => {
        if (!confirm(`Revoke ${k.prefix}…? Calls with it are refused at once.`)) return;
        try {
          await api(`/v1/keys/${encodeURIComponent(k.key_id)}`, { method: 'DELETE' });
          toast('Key revoked.');
          await load();
        } catch (e) { toast('Could not revoke: ' + e.message); }
      };
      const stopping = k.revoked_at && new Date(k.revoked_at) > new Date();
      const actions = k.revoked_at
        ? h('span', { class: 'muted', text: (stopping ? 'stops ' : 'revoked ') + when(k.revoked_at, undefined, stopping) })
        : h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary', 'aria-label': `Rotate key ${k.prefix}`, text: 'Rotate', onclick: rotate }),
          h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke key ${k.prefix}`, text: 'Revoke', onclick: revoke }));
      return h('tr', { 'data-key': k.key_id },
        h('td', {}, k.name ? h('div', { class: 'key-name', text: k.name }) : null, h('span', { class: 'mono', text: k.prefix + '…' }), h('div', { class: 'muted mono', text: k.key_id })),
        h('td', { class: 'hide-narrow', text: k.env === 'live' ? 'Live' : 'Sandbox' }),
        h('td', { class: 'hide-narrow', text: when(k.created_at, undefined, true) }),
        h('td', { class: 'last-used', text: k.last_used_at ? when(k.last_used_at, undefined, true) : 'not in 90 days' }),
        h('td', {}, stopping ? badge('rotated', 'draft') : k.revoked_at ? badge('revoked') : badge('active')),
        h('td', {}, actions));
    }
    page('API keys', secretBox, h('section', { class: 'panel' }, h('h2', { text: 'Issue a key' }), issue), h('section', { class: 'panel' }, h('h2', { text: 'Your keys' }), rotation, list));
    await load();
  }

  // ---------- invoices ----------

  function downloads(inv) {
    const base = `/v1/invoices/${encodeURIComponent(inv.id)}`;
    const name = inv.number || inv.id;
    return h('div', { class: 'actions' },
      h('a', { class: 'button secondary', href: base + '?format=pdf', download: name + '.pdf', 'aria-label': `Download ${name} as PDF`, text: 'PDF' }),
      h('a', { class: 'button secondary', href: base + '?format=csv', download: name + '.csv', 'aria-label': `Download ${name} as CSV`, text: 'CSV' }));
  }

  // An invoice's lines and totals; with `due`, also the credits taken and the amount due.
  function invoiceTable(inv, caption, due) {
    const cur = inv.currency;
    const total = (label, amount) => h('tr', {},
      h('th', { scope: 'row', text: label }), h('td'), h('td', { class: 'hide-narrow' }),
      h('td', { class: 'num', text: money(amount, cur) }));
    return table(['Line', ['Quantity', 'num'], ['Unit price', 'num hide-narrow'], ['Amount', 'num']],
      inv.lines.map((l) => h('tr', {},
        h('td', { text: l.description }),
        h('td', { class: 'num', text: num(l.quantity) }),
        h('td', { class: 'num hide-narrow', text: unitMoney(l.unit_price, cur) }),
        h('td', { class: 'num', text: money(l.amount, cur) }))).concat([
        total('Subtotal', inv.subtotal),
        inv.tax ? total(`${inv.tax.label} ${dec(inv.tax.rate) * 100} %`, inv.tax.amount) : null,
        total('Total', inv.total),
        due && dec(inv.credits_applied) ? total('Prepaid credits', '-' + inv.credits_applied) : null,
        due ? total('Amount due', inv.amount_due) : null]),
      caption);
  }

  // Viewers read; finance and admins act.
  const mayAct = () => session.role === 'finance' || session.role === 'admin';
  // Who did something, as the audit log names them: a staff member by their email.
  const byWhom = (label) => label ? ' by ' + label.replace(/^staff:/, '') : '';

  // Finance's buttons for an invoice: finalize a draft, void a finalized one; `after` runs once
  // the server has done it.
  function lifecycleButtons(r, after) {
    if (!mayAct()) return [];
    const act = (verb, cls, question) => h('button', {
      type: 'button', class: cls, text: verb[0].toUpperCase() + verb.slice(1), 'aria-label': `${verb} ${r.number || r.id}`,
      onclick: async () => {
        if (!confirm(question)) return;
        try {
          const done = await api(`/v1/invoices/${encodeURIComponent(r.id)}/${verb}`, { method: 'POST' });
          toast(verb === 'finalize' ? `Finalized as ${done.number}.` : `Voided ${done.number || done.id}.`);
          await after();
        } catch (e) { toast(`Could not ${verb}: ${e.message}`); }
      },
    });
    const over = new Date(r.invoice.period.end) <= new Date();
    if (r.status === 'draft' && over) return [act('finalize', '', `Finalize this invoice for ${r.period_label}? It gets a number and can no longer change.`)];
    if (r.status === 'draft') return [h('span', { class: 'muted', text: `open until ${when(r.invoice.period.end, r.invoice.timezone)}` })];
    const paid = r.payment && dec(r.payment.amount_paid) > 0;
    if (r.status === 'finalized' && !paid) return [act('void', 'danger', `Void ${r.number}? The number is kept; credits taken are given back.`)];
    return [];
  }

  async function invoicesPage() {
    const finance = session.role !== 'partner';
    const filters = h('form', { class: 'controls', 'aria-label': 'Filters' },
      h('label', { for: 'f-period' }, 'Period', h('input', { id: 'f-period', type: 'month' })),
      h('label', { for: 'f-status' }, 'Status', h('select', { id: 'f-status' }, [['', 'Any'], ['draft', 'Draft'], ['finalized', 'Finalized'], ['void', 'Void']].map(([v, t]) => h('option', { value: v, text: t })))),
      finance ? h('label', { for: 'f-q' }, 'Partner', h('input', { id: 'f-q', type: 'search', placeholder: 'name or id' })) : null,
      h('button', { type: 'submit', text: 'Apply' }));
    const exportLink = h('a', { class: 'button secondary', id: 'export-csv', text: 'Export CSV' });
    const finalizeAll = h('button', { type: 'button', class: 'secondary', text: 'Finalize the period' });
    const runBox = finance && mayAct() ? h('form', { class: 'controls' },
      h('label', { for: 'run-period' }, 'Invoice run for period', h('input', { id: 'run-period', type: 'month', required: true })),
      h('button', { type: 'submit', text: 'Compute drafts' }), finalizeAll) : null;
    const list = h('div');
    const totalsBox = h('div', { id: 'invoice-totals' });
    const partners = {};
    if (finance) {
      (await api('/v1/partners')).partners.forEach((p) => { partners[p.id] = p.name; });
      if (runBox) runBox.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        try {
          const s = await api('/v1/invoices/run', { method: 'POST', body: { period: runBox.querySelector('input').value } });
          toast(`Run done: ${s.created} created, ${s.updated} updated, ${s.unchanged} unchanged, ${s.not_due} not due, ${s.errors.length} failed.`);
          await load();
        } catch (e) { toast('Run failed: ' + e.message); }
      });
      finalizeAll.addEventListener('click', async () => {
        const period = runBox.querySelector('input').value;
        if (!period) { toast('Choose the period to finalize.'); return; }
        if (!confirm(`Finalize every draft of ${period} whose period is over? Each gets a number and can no longer change.`)) return;
        try {
          const f = await api('/v1/invoices/finalize', { method: 'POST', body: { period } });
          toast(`${period}: ${f.finalized.length} finalized, ${f.not_over} still running, ${f.errors.length} failed.`);
          await load();
        } catch (e) { toast('Could not finalize: ' + e.message); }
      });
    }
    async function load() {
      const q = new URLSearchParams();
      const period = filters.querySelector('#f-period').value;
      const status = filters.querySelector('#f-status').value;
      if (period) q.set('period', period);
      if (status) q.set('status', status);
      exportLink.href = '/v1/invoices?format=csv&' + q;
      exportLink.setAttribute('download', 'invoices.csv');
      let rows;
      try { rows = (await api('/v1/invoices?' + q)).invoices; } catch (e) { fail(list, e); return; }
      const needle = finance ? filters.querySelector('#f-q').value.trim().toLowerCase() : '';
      if (needle) rows = rows.filter((r) => r.partner_id.toLowerCase().includes(needle) || (partners[r.partner_id] || '').toLowerCase().includes(needle));
      rows.sort((a, b) => b.period_label.localeCompare(a.period_label) || a.partner_id.localeCompare(b.partner_id));
      const head = ['Invoice', 'Period', ...(finance ? ['Partner'] : []), 'Status', ['Total', 'num hide-narrow'], ['Amount due', 'num'], 'Download', ...(finance && mayAct() ? ['Actions'] : [])];
      // Totals by period and state, per currency: what finance reconciles (exact sums).
      const sums = new Map();
      for (const r of rows) {
        const k = `${r.period_label}\u0000${r.state}\u0000${r.invoice.currency}`;
        const t = sums.get(k) || { period: r.period_label, state: r.state, currency: r.invoice.currency, n: 0, total: 0n, due: 0n };
        t.n += 1;
        t.total += exact(r.invoice.total);
        t.due += r.status === 'void' ? 0n : exact(r.invoice.amount_due);
        sums.set(k, t);
      }
      const totals = [...sums.values()].sort((a, b) => b.period.localeCompare(a.period) || a.state.localeCompare(b.state));
      totalsBox.replaceChildren(finance && totals.length
        ? h('details', { open: true }, h('summary', { text: 'Totals by period and state' }),
          table(['Period', 'State', ['Invoices', 'num'], ['Total', 'num'], ['Amount due', 'num']], totals.map((t) => h('tr', {},
            h('td', { text: t.period }), h('td', {}, badge(t.state)), h('td', { class: 'num', text: num(t.n) }),
            h('td', { class: 'num', text: money(fromExact(t.total), t.currency) }), h('td', { class: 'num', text: money(fromExact(t.due), t.currency) }))), 'Invoice totals by period and state'))
        : '');
      list.replaceChildren(rows.length ? table(head, rows.map((r) => {
        const i = r.invoice;
        return h('tr', { 'data-invoice': r.id },
          h('td', {}, link(`/app/invoices/${encodeURIComponent(r.id)}`, r.number || 'Draft', { class: 'mono', 'aria-label': `Review ${r.number || 'draft'} ${r.id}` }), h('div', { class: 'muted mono', text: r.id })),
          h('td', { text: r.period_label }),
          finance ? h('td', { text: partners[r.partner_id] || r.partner_id }) : null,
          h('td', {}, stateBadge(r)),
          h('td', { class: 'num hide-narrow', text: money(i.total, i.currency) }),
          h('td', { class: 'num', text: r.status === 'void' ? '—' : money(i.amount_due, i.currency) }),
          h('td', {}, downloads(r)),
          finance && mayAct() ? h('td', {}, h('div', { class: 'actions' }, lifecycleButtons(r, load))) : null);
      }), 'Invoices') : h('p', { class: 'muted', text: 'No invoices match.' }));
    }
    filters.addEventListener('submit', (ev) => { ev.preventDefault(); load(); });
    page('Invoices',
      runBox ? h('section', { class: 'panel' }, h('h2', { text: 'Invoice run' }), runBox) : null,
      h('section', { class: 'panel' }, filters, h('p', {}, exportLink), totalsBox, list),
      finance ? null : billingDetailsPanel(session.partner_id));
    await load();
  }

  // The partner's billing details, printed under "Bill to" on the invoices drafted from now on.
  function billingDetailsPanel(partnerId) {
    const pid = encodeURIComponent(partnerId);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'details-h' }, h('h2', { id: 'details-h', text: 'Billing details' }));
    const field = (id, label, attrs) => h('label', { for: id, class: 'field' }, label, h(attrs && attrs.rows ? 'textarea' : 'input', Object.assign({ id, name: id }, attrs || {})));
    const form = h('form', { class: 'details-form', 'aria-label': 'Billing details' },
      h('p', { class: 'muted', text: 'Printed under "Bill to" on your invoices from the next one on; finalized invoices keep what they were issued with.' }),
      field('bd-name', 'Legal name (if not your account name)', { autocomplete: 'organization' }),
      field('bd-address', 'Address (one line each)', { rows: 4, autocomplete: 'street-address' }),
      field('bd-tax', 'VAT or tax id', { autocomplete: 'off' }),
      field('bd-email', 'Invoice email', { type: 'email', autocomplete: 'email' }),
      h('p', {}, h('button', { type: 'submit', text: 'Save the billing details' })));
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    panel.append(form, status);
    const $ = (id) => form.querySelector('#' + id);
    // Nothing can be typed before the details are read back, so none is overwritten.
    const fields = [...form.querySelectorAll('input, textarea, button')];
    fields.forEach((f) => { f.disabled = true; });
    api(`/v1/partners/${pid}/billing-details`).then((d) => {
      $('bd-name').value = d.legal_name || '';
      $('bd-address').value = (d.address || []).join('\n');
      $('bd-tax').value = d.tax_id || '';
      $('bd-email').value = d.email || '';
      fields.forEach((f) => { f.disabled = false; });
    }).catch((e) => fail(status, e));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api(`/v1/partners/${pid}/billing-details`, { method: 'PUT', body: {
          legal_name: $('bd-name').value, address: $('bd-address').value.split('\n'),
          tax_id: $('bd-tax').value, email: $('bd-email').value } });
        status.replaceChildren(h('p', { id: 'details-saved', text: 'Saved: your next invoice carries these details.' }));
      } catch (e) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message })); }
    });
    return panel;
  }

  async function invoicePage(id) {
    const r = await api(`/v1/invoices/${encodeURIComponent(id)}`);
    const i = r.invoice, cur = i.currency, finance = session.role !== 'partner';
    const partnerName = finance ? ((await api(`/v1/partners/${encodeURIComponent(r.partner_id)}`)).name) : session.partner_name;
    const actions = h('div', { class: 'actions' }, Array.from(downloads(r).childNodes),
      finance ? lifecycleButtons(r, () => invoicePage(id)) : null);
    page(r.number ? `Invoice ${r.number}` : 'Draft invoice',
      h('p', {}, link('/app/invoices', '← All invoices')),
      h('div', { class: 'cards' },
        h('div', { class: 'card' }, h('div', { class: 'label', text: 'Partner' }), h('div', { class: 'value', text: partnerName || r.partner_id }), h('div', { class: 'sub mono', text: r.partner_id })),
        h('div', { class: 'card' }, h('div', { class: 'label', text: 'Period' }), h('div', { class: 'value', text: r.period_label }), h('div', { class: 'sub', text: `${when(i.period.start, i.timezone)} – ${when(new Date(new Date(i.period.end) - 1), i.timezone)} (${i.timezone})` })),
        h('div', { class: 'card' }, h('div', { class: 'label', text: 'Amount due' }), h('div', { class: 'value', text: r.status === 'void' ? 'Nothing (void)' : money(i.amount_due, cur) }), h('div', {}, stateBadge(r)))),
      h('section', { class: 'panel' }, h('h2', { text: 'Lines' }),
        invoiceTable(i, 'Invoice lines', true),
        h('p', { class: 'muted', text: `Plan ${i.plan_id} (version ${i.plan_version.slice(0, 12)}) · created ${when(r.created_at, undefined, true)}${r.finalized_at ? ' · finalized ' + when(r.finalized_at, undefined, true) + byWhom(r.finalized_by) : ''}${r.voided_at ? ' · voided ' + when(r.voided_at, undefined, true) + byWhom(r.voided_by) : ''}` })),
      actions,
      r.status === 'finalized' ? paymentsPanel(r, () => invoicePage(id)) : null,
      r.status === 'finalized' ? creditNotesPanel(r, () => invoicePage(id)) : null);
  }

  // What finance sees of an invoice: its state, and when it is due or was paid.
  function stateBadge(r) {
    const state = r.state || r.status;
    const p = r.payment || {};
    const sub = state === 'open' || state === 'overdue' ? `due ${when(p.due_at)}`
      : state === 'paid' && p.paid_at ? `paid ${when(p.paid_at)}` : '';
    return h('span', {}, badge(state), sub ? h('div', { class: 'muted', text: sub }) : null);
  }

  // A finalized invoice's payments, what is left to pay, and (for finance) a new payment.
  function paymentsPanel(r, after) {
    const cur = r.invoice.currency, iid = encodeURIComponent(r.id);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'payments-h' }, h('h2', { id: 'payments-h', text: 'Payments' }));
    const list = h('div', { id: 'payments' }, h('p', { class: 'muted', text: 'Loading…' }));
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    panel.append(list, status);
    api(`/v1/invoices/${iid}/payments`).then((data) => {
      list.replaceChildren(
        data.payments.length ? table(['Received', 'Reference', ['Amount', 'num']], data.payments.map((p) => h('tr', {},
          h('td', { text: when(p.paid_on) }),
          h('td', { text: p.reference }),
          h('td', { class: 'num', text: money(p.amount, cur) }))), 'Payments of this invoice') : h('p', { class: 'muted', text: 'No payment yet.' }),
        h('p', {}, `Paid ${money(data.amount_paid, cur)}; `, h('strong', { id: 'pay-left', text: `${money(data.left_due, cur)} left to pay` }), r.payment && r.payment.due_at ? `, due ${when(r.payment.due_at)}.` : '.'));
    }).catch((e) => fail(list, e));
    if (session.role === 'partner' || !mayAct() || !['open', 'overdue'].includes(r.state)) return panel;
    const amount = h('input', { id: 'pay-amount', name: 'amount', inputmode: 'decimal', required: true });
    const on = h('input', { id: 'pay-on', name: 'paid_on', type: 'date', value: new Date().toISOString().slice(0, 10) });
    const reference = h('input', { id: 'pay-reference', name: 'reference', required: true, placeholder: 'transfer or charge id' });
    const form = h('form', { class: 'controls', 'aria-label': 'Record a payment' },
      h('label', { for: 'pay-amount' }, 'Amount', amount),
      h('label', { for: 'pay-on' }, 'Received on', on),
      h('label', { for: 'pay-reference' }, 'Reference', reference),
      h('button', { type: 'submit', text: 'Record payment' }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const made = await api(`/v1/invoices/${iid}/payments`, { method: 'POST', body: { amount: amount.value.trim(), paid_on: on.value || undefined, reference: reference.value.trim() } });
        toast(`Payment of ${money(made.payment.amount, cur)} recorded; the invoice is ${made.invoice.state}.`);
        await after();
      } catch (e) {
        status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message }));
      }
    });
    const writeOff = h('button', { type: 'button', class: 'danger', text: 'Mark uncollectible', onclick: async () => {
      if (!confirm(`Write off ${r.number}? No payment can be recorded on it afterwards.`)) return;
      try {
        await api(`/v1/invoices/${iid}/mark-uncollectible`, { method: 'POST' });
        toast(`${r.number} written off.`);
        await after();
      } catch (e) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message })); }
    } });
    panel.append(h('h3', { text: 'Record a payment' }), form, h('div', { class: 'actions' }, writeOff));
    return panel;
  }

  // A finalized invoice's credit notes, what is left due, and (for finance) a new one.
  function creditNotesPanel(r, after) {
    const i = r.invoice, cur = i.currency, iid = encodeURIComponent(r.id);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'credit-notes-h' }, h('h2', { id: 'credit-notes-h', text: 'Credit notes' }));
    const list = h('div', { id: 'credit-notes' }, h('p', { class: 'muted', text: 'Loading…' }));
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    panel.append(list, status);
    api(`/v1/invoices/${iid}/credit-notes`).then((data) => {
      if (!data.credit_notes.length) {
        list.replaceChildren(h('p', { class: 'muted', text: 'No credit note.' }));
        return;
      }
      list.replaceChildren(
        table(['Number', 'Reason', 'Money', ['Total', 'num'], ''], data.credit_notes.map((n) => {
          const base = `/v1/credit-notes/${encodeURIComponent(n.id)}`;
          return h('tr', {},
            h('td', { class: 'mono', text: n.number }),
            h('td', { text: n.note.reason }),
            h('td', { text: n.note.method === 'credit' ? 'to the prepaid balance' : 'refunded' }),
            h('td', { class: 'num', text: money(n.note.total, cur) }),
            h('td', {}, h('a', { class: 'button secondary', href: base + '?format=pdf', download: n.number + '.pdf', 'aria-label': `Download ${n.number} as PDF`, text: 'PDF' })));
        }), 'Credit notes of this invoice'),
        h('p', {}, `Credited ${money(data.credited, cur)} in all; `, h('strong', { id: 'left-due', text: `${money(data.left_due, cur)} left due` }), '.'));
    }).catch((e) => fail(list, e));
    if (session.role === 'partner' || !mayAct()) return panel;
    const what = h('select', { id: 'credit-line', name: 'line' },
      h('option', { value: '', text: 'An amount of the subtotal' }),
      ...i.lines.map((l, n) => l.kind === 'discount' || dec(l.amount) <= 0 ? null : h('option', { value: String(n), text: `${l.description} (${money(l.amount, cur)})` })));
    const amount = h('input', { id: 'credit-amount', name: 'amount', inputmode: 'decimal', placeholder: 'whole line if empty' });
    const reason = h('input', { id: 'credit-reason', name: 'reason', required: true });
    const method = h('select', { id: 'credit-method', name: 'method' },
      h('option', { value: 'credit', text: 'To the prepaid balance' }), h('option', { value: 'refund', text: 'Refunded' }));
    const form = h('form', { class: 'controls', 'aria-label': 'Credit this invoice' },
      h('label', { for: 'credit-line' }, 'What', what),
      h('label', { for: 'credit-amount' }, 'Amount before tax', amount),
      h('label', { for: 'credit-reason' }, 'Reason', reason),
      h('label', { for: 'credit-method' }, 'Money', method),
      h('button', { type: 'submit', text: 'Make credit note' }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { reason: reason.value.trim(), method: method.value };
      const a = amount.value.trim();
      if (what.value === '') {
        if (!a) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: 'Give the amount to credit.' })); return; }
        body.amount = a;
      } else {
        body.lines = [a ? { line: Number(what.value), amount: a } : { line: Number(what.value) }];
      }
      if (!confirm(`Make a credit note of ${a || 'the whole line'} (before tax) on ${r.number}? It cannot be undone.`)) return;
      try {
        const n = await api(`/v1/invoices/${iid}/credit-notes`, { method: 'POST', body });
        toast(`Credit note ${n.number} made: ${money(n.note.total, cur)}.`);
        await after();
      } catch (e) {
        status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message }));
      }
    });
    panel.append(h('h3', { text: 'Credit this invoice' }), form);
    return panel;
  }

  // ---------- finance: partners ----------

  async function partnersPage() {
    const search = h('input', { id: 'search', type: 'search', placeholder: 'Name, id or plan', autocomplete: 'off' });
    const sort = h('select', { id: 'sort', name: 'sort' },
      h('option', { value: 'name', text: 'Name' }), h('option', { value: 'plan', text: 'Plan' }),
      h('option', { value: 'running_total', text: 'Running cost, largest first' }), h('option', { value: 'id', text: 'Id' }));
    const form = h('form', { class: 'controls', role: 'search' },
      h('label', { for: 'search' }, 'Search partners', search),
      h('label', { for: 'sort' }, 'Sort by', sort),
      h('button', { type: 'submit', text: 'Search' }));
    const list = h('div');
    const PAGE = 50;
    let offset = 0;
    sort.addEventListener('change', () => { offset = 0; load(); });
    async function load() {
      list.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
      let data;
      try { data = await api(`/v1/partners/overview?limit=${PAGE}&offset=${offset}&sort=${sort.value}&q=${encodeURIComponent(search.value)}`); } catch (e) { fail(list, e); return; }
      const last = Math.min(offset + data.partners.length, data.total);
      const pager = h('div', { class: 'actions pager' },
        h('button', { type: 'button', class: 'secondary', text: '← Previous', disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }),
        h('span', { id: 'page-of', class: 'muted', text: data.total ? `${offset + 1}–${last} of ${data.total}` : 'none' }),
        h('button', { type: 'button', class: 'secondary', text: 'Next →', disabled: last >= data.total, onclick: () => { offset += PAGE; load(); } }));
      list.replaceChildren(
        h('p', { class: 'muted', text: `${data.total} partner(s)` }),
        table(['Partner', 'Plan', ['Period', 'hide-narrow'], ['Usage this period', 'hide-narrow'], ['Running cost', 'num']], data.partners.map((p) => h('tr', {},
          h('td', {}, link(`/app/partners/${encodeURIComponent(p.id)}`, p.name), h('div', { class: 'muted mono', text: p.id })),
          h('td', { text: p.plan_id }),
          h('td', { class: 'hide-narrow', text: p.error ? '—' : `${when(p.period_start, p.timezone)} – ${when(new Date(new Date(p.period_end) - 1), p.timezone)}` }),
          h('td', { class: 'hide-narrow', text: p.error ? p.error : p.usage.map((u) => `${u.meter} ${num(u.quantity)}`).join(' · ') }),
          h('td', { class: 'num', text: p.error ? '—' : money(p.running_total, p.currency) }))), 'Partners'),
        ...(data.total > PAGE ? [pager] : []));
    }
    form.addEventListener('submit', (ev) => { ev.preventDefault(); offset = 0; load(); });
    page('Partners', h('section', { class: 'panel' }, form, list), mayAct() ? addPartnerPanel() : null);
    await load();
  }

  // ---------- finance console: partners, profiles, credits, webhooks ----------

  function addPartnerPanel() {
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'add-partner-h' }, h('h2', { id: 'add-partner-h', text: 'Add a partner' }));
    const plan = h('select', { id: 'new-plan', name: 'plan' });
    const form = h('form', { class: 'controls', 'aria-label': 'Add a partner' },
      h('label', { for: 'new-partner' }, 'Name', h('input', { id: 'new-partner', name: 'name', required: true, maxlength: 200 })),
      h('label', { for: 'new-plan' }, 'Plan', plan),
      h('label', { for: 'new-external' }, 'External id (optional)', h('input', { id: 'new-external', name: 'external_id', autocomplete: 'off' })),
      h('button', { type: 'submit', text: 'Add the partner' }));
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    panel.append(form, status);
    api('/v1/plans').then(({ plans }) => plan.replaceChildren(...plans.map((p) => h('option', { value: p.id, text: `${p.name} (${p.id})` })))).catch((e) => fail(status, e));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { name: form.querySelector('#new-partner').value, plan: plan.value };
      const ext = form.querySelector('#new-external').value.trim();
      if (ext) body.external_id = ext;
      try {
        const p = await api('/v1/partners', { method: 'POST', body });
        toast(`${p.name} added on ${p.subscription.plan_id}.`);
        go(`/app/partners/${encodeURIComponent(p.id)}`);
      } catch (e) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message })); }
    });
    return panel;
  }

  // Finance's part of the billing profile: time zone, tax, payment terms.
  function profilePanel(partner) {
    const pid = encodeURIComponent(partner.id);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'profile-h' }, h('h2', { id: 'profile-h', text: 'Billing profile' }));
    const input = (id, label, attrs) => h('label', { for: id }, label, h('input', Object.assign({ id, name: id }, attrs || {})));
    const form = h('form', { class: 'controls', 'aria-label': 'Billing profile' },
      input('pf-tz', 'Billing time zone', { required: true, placeholder: 'Europe/Paris' }),
      input('pf-rate', 'Tax rate (%)', { inputmode: 'decimal', placeholder: 'the plan\'s', size: 8 }),
      input('pf-label', 'Tax label', { placeholder: 'VAT', size: 10 }),
      input('pf-net', 'Payment terms (days)', { inputmode: 'numeric', placeholder: 'the plan\'s', size: 6 }),
      mayAct() ? h('button', { type: 'submit', text: 'Save the profile' }) : null);
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    panel.append(form, status);
    const $ = (id) => form.querySelector('#' + id);
    // Nothing can be typed before the profile is read back, so none is overwritten.
    const fields = [...form.querySelectorAll('input, button')];
    fields.forEach((f) => { f.disabled = true; });
    api(`/v1/partners/${pid}/billing`).then((p) => {
      $('pf-tz').value = p.timezone;
      if (p.tax) { $('pf-rate').value = String(Math.round(dec(p.tax.rate) * 100000) / 1000); $('pf-label').value = p.tax.label; }
      if (p.net_days !== undefined && p.net_days !== null) $('pf-net').value = p.net_days;
      fields.forEach((f) => { f.disabled = !mayAct() && f.tagName === 'BUTTON'; });
    }).catch((e) => fail(status, e));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { timezone: $('pf-tz').value.trim() };
      const rate = $('pf-rate').value.trim();
      if (rate) {
        // Percent to a fraction, exactly: move the decimal point two places.
        const [i, f = ''] = rate.split('.');
        const digits = (i.padStart(3, '0') + f).replace(/^0+(?=\d)/, '');
        const whole = digits.length > f.length + 2 ? digits.slice(0, digits.length - f.length - 2) : '0';
        const frac = digits.slice(-(f.length + 2)).padStart(f.length + 2, '0');
        body.tax = { rate: `${whole}.${frac}`, label: $('pf-label').value.trim() || 'Tax' };
      }
      const net = $('pf-net').value.trim();
      if (net) body.net_days = Number(net);
      try {
        await api(`/v1/partners/${pid}/billing`, { method: 'PUT', body });
        status.replaceChildren(h('p', { id: 'profile-saved', text: 'Saved: the next draft uses this profile.' }));
      } catch (e) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message })); }
    });
    return panel;
  }

  // Prepaid credit: balances, the ledger, and a grant.
  function creditPanel(partner, plan) {
    const pid = encodeURIComponent(partner.id);
    const panel = h('section', { class: 'panel', 'aria-labelledby': 'credit-h' }, h('h2', { id: 'credit-h', text: 'Prepaid credit' }));
    const body = h('div', { id: 'credits' });
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    panel.append(body, status);
    async function load() {
      try {
        const c = await api(`/v1/partners/${pid}/credits`);
        const balances = Object.entries(c.balances);
        fill(body,
          h('p', { id: 'credit-balance', text: balances.length ? 'Balance: ' + balances.map(([cur, b]) => money(b, cur)).join(', ') : 'No prepaid credit.' }),
          c.entries.length ? table(['Date', 'Description', ['Amount', 'num']], c.entries.slice().reverse().slice(0, 20).map((e) => h('tr', {},
            h('td', { text: when(e.created_at, undefined, true) }), h('td', { text: e.description }), h('td', { class: 'num', text: money(e.amount, e.currency) }))), 'Credit ledger') : null);
      } catch (e) { fail(body, e); }
    }
    load();
    if (!mayAct()) return panel;
    const cur = plan ? plan.currency : 'EUR';
    const form = h('form', { class: 'controls', 'aria-label': 'Grant credit' },
      h('label', { for: 'cr-amount' }, 'Amount', h('input', { id: 'cr-amount', name: 'amount', inputmode: 'decimal', required: true, size: 10 })),
      h('label', { for: 'cr-currency' }, 'Currency', h('input', { id: 'cr-currency', name: 'currency', value: cur, size: 4, required: true })),
      h('label', { for: 'cr-description' }, 'Description', h('input', { id: 'cr-description', name: 'description', required: true })),
      h('button', { type: 'submit', text: 'Grant the credit' }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api(`/v1/partners/${pid}/credits`, { method: 'POST', body: {
          amount: form.querySelector('#cr-amount').value.trim(), currency: form.querySelector('#cr-currency').value.trim(),
          description: form.querySelector('#cr-description').value } });
        status.replaceChildren();
        toast('Credit granted: the next invoice takes it.');
        form.reset();
        form.querySelector('#cr-currency').value = cur;
        await load();
      } catch (e) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message })); }
    });
    panel.append(h('h3', { text: 'Grant credit' }), form);
    return panel;
  }

  const WEBHOOK_EVENTS = ['invoice.finalized', 'invoice.paid', 'invoice.overdue', 'credit_note.created', 'alert.triggered',
    'quota.near_limit', 'quota.soft_exceeded', 'quota.hard_blocked', 'quota.shadow_exceeded'];

  async function webhooksPage() {
    const list = h('div');
    const log = h('div');
    const secretBox = h('div');
    const url = h('input', { id: 'wh-url', name: 'url', type: 'url', required: true, placeholder: 'https://hooks.example.com/peage' });
    const boxes = WEBHOOK_EVENTS.map((e) => h('label', { class: 'check' }, h('input', { type: 'checkbox', value: e, checked: e.startsWith('invoice.') }), ' ', e));
    const form = h('form', { 'aria-label': 'Add an endpoint', class: 'details-form' },
      h('label', { for: 'wh-url', class: 'field' }, 'Endpoint URL (https)', url),
      h('fieldset', {}, h('legend', { text: 'Events' }), ...boxes),
      h('p', {}, h('button', { type: 'submit', text: 'Add the endpoint' })));
    const status = h('div', { role: 'status', 'aria-live': 'polite' });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const events = boxes.map((b) => b.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
      try {
        const ep = await api('/v1/webhooks', { method: 'POST', body: { url: url.value.trim(), events } });
        status.replaceChildren();
        secretBox.replaceChildren(h('div', { class: 'secret', role: 'alert' },
          h('h2', { text: 'Endpoint added' }),
          h('p', { text: 'Its signing secret, shown once: verify each message\'s webhook-signature with it.' }),
          h('code', { id: 'wh-secret', text: ep.secret })));
        form.reset();
        await load();
      } catch (e) { status.replaceChildren(h('p', { class: 'error', role: 'alert', text: e.message })); }
    });
    async function load() {
      try {
        const [{ endpoints }, { deliveries }] = await Promise.all([api('/v1/webhooks'), api('/v1/webhooks/deliveries?limit=50')]);
        list.replaceChildren(endpoints.length
          ? table(['Endpoint', 'Events', ['Added', 'hide-narrow']], endpoints.map((e) => h('tr', {},
            h('td', { class: 'mono', text: e.url }), h('td', { text: e.events.join(', ') }), h('td', { class: 'hide-narrow', text: when(e.created_at, undefined, true) }))), 'Webhook endpoints')
          : h('p', { class: 'muted', text: 'No endpoint yet.' }));
        log.replaceChildren(deliveries.length
          ? table(['Event', 'Status', ['Attempts', 'num'], ['Last error', 'hide-narrow'], 'Created'], deliveries.map((d) => h('tr', {},
            h('td', { class: 'mono', text: d.event_type }), h('td', {}, badge(d.status)), h('td', { class: 'num', text: num(d.attempts) }),
            h('td', { class: 'hide-narrow', text: d.last_error || (d.last_status ? `HTTP ${d.last_status}` : '—') }), h('td', { text: when(d.created_at, undefined, true) }))), 'Webhook deliveries')
          : h('p', { class: 'muted', text: 'Nothing sent yet.' }));
      } catch (e) { fail(list, e); }
    }
    page('Webhooks', secretBox,
      h('section', { class: 'panel', 'aria-labelledby': 'wh-h' }, h('h2', { id: 'wh-h', text: 'Endpoints' }), list, h('h3', { text: 'Add an endpoint' }), form, status),
      h('section', { class: 'panel', 'aria-labelledby': 'wh-log-h' }, h('h2', { id: 'wh-log-h', text: 'Latest deliveries' }), log));
    await load();
  }

  // ---------- APIs and their docs ----------

  // What a partner's plan includes of a version (staff see no column).
  function inclusion(v) {
    if (v.included === undefined) return null;
    if (!v.included) return badge('not in your plan', 'void');
    if (v.included_operations) return badge(`${v.included_operations.length} operation(s)`, 'draft');
    return badge('included', 'ok');
  }

  async function apisPage() {
    const data = await api('/v1/apis');
    const partnerView = session.role === 'partner';
    page('APIs',
      data.gateway_url ? h('p', { id: 'gateway-url' }, 'Call every API through ', h('code', { text: data.gateway_url }), ', as ', h('code', { text: `${data.gateway_url}/<api>/<version>/…` }), ' with your API key.') : null,
      ...data.apis.map((a) => h('section', { class: 'panel' },
      h('h2', { text: a.name }),
      a.description ? h('p', { class: 'muted', text: a.description }) : null,
      table(['Version', 'Status', partnerView ? 'Your plan' : null, ['Sunset', 'hide-narrow'], ['Successor', 'hide-narrow'], 'Docs'].filter(Boolean), a.versions.map((v) => h('tr', {},
        h('td', { class: 'mono', text: v.id }),
        h('td', {}, badge(v.status)),
        partnerView ? h('td', { class: 'included' }, inclusion(v)) : null,
        h('td', { class: 'hide-narrow', text: v.sunset ? when(v.sunset + 'T00:00:00Z', 'UTC') : '—' }),
        h('td', { class: 'hide-narrow', text: v.successor || '—' }),
        h('td', {}, v.has_openapi ? link(`/app/apis/${encodeURIComponent(a.name)}/${encodeURIComponent(v.id)}`, 'Reference', { 'aria-label': `${a.name} ${v.id} reference` }) : h('span', { class: 'muted', text: (v.operations || []).length ? `${v.operations.length} operation(s), no document` : 'no document' })))), `${a.name} versions`))));
  }

  // CommonMark's everyday subset, as DOM nodes (never HTML from the document): paragraphs,
  // `code`, **strong**, *emphasis* and [links](https://…).
  function markdown(text) {
    const inline = (t) => {
      const out = [];
      const re = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*]+)\*|\[([^\]]+)\]\((https?:\/\/[^)\s]+)\)/g;
      let last = 0, m;
      while ((m = re.exec(t))) {
        if (m.index > last) out.push(t.slice(last, m.index));
        if (m[1] !== undefined) out.push(h('code', { text: m[1] }));
        else if (m[2] !== undefined) out.push(h('strong', { text: m[2] }));
        else if (m[3] !== undefined) out.push(h('em', { text: m[3] }));
        else out.push(h('a', { href: m[5], rel: 'noopener', target: '_blank', text: m[4] }));
        last = re.lastIndex;
      }
      if (last < t.length) out.push(t.slice(last));
      return out;
    };
    const blocks = String(text).split(/\n\s*\n/).map((b) => b.trim()).filter(Boolean);
    return h('div', { class: 'md' }, blocks.map((b) => h('p', {}, inline(b.replace(/\s*\n\s*/g, ' ')))));
  }

  async function apiDocPage(name, version) {
    const [doc, apis] = await Promise.all([
      api(`/v1/apis/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/openapi`),
      api('/v1/apis'),
    ]);
    const v = ((apis.apis.find((a) => a.name === name) || {}).versions || []).find((x) => x.id === version) || {};
    const info = doc.info || {};
    const warn = v.status === 'deprecated'
      ? h('div', { class: 'secret', role: 'note' }, `${name} ${version} is deprecated${v.sunset ? ' and stops answering on ' + when(v.sunset + 'T00:00:00Z', 'UTC') : ''}.`, v.successor ? ` Move to ${v.successor}.` : '')
      : null;
    const notIncluded = v.included === false
      ? h('div', { class: 'error', role: 'note', text: `Your plan does not include ${name} ${version}: calls to it are refused with 403 (not-entitled).` })
      : null;
    const base = apis.gateway_url ? `${apis.gateway_url}/${name}/${version}` : null;
    const baseBox = base ? h('section', { class: 'panel', 'aria-labelledby': 'base-h' },
      h('h2', { id: 'base-h', text: 'Base URL' }),
      h('p', {}, h('code', { id: 'api-base-url', text: base })),
      h('pre', { class: 'mono wrap', text: `curl -H 'Authorization: Bearer <your API key>' ${base}/…` })) : null;
    const ops = [];
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const method of ['get', 'put', 'post', 'delete', 'patch', 'head', 'options']) {
        const op = item[method];
        if (!op) continue;
        const params = [...(item.parameters || []), ...(op.parameters || [])];
        const opName = `${method.toUpperCase()} ${path}`;
        const outside = v.included === false || (v.included_operations && !v.included_operations.includes(opName));
        ops.push(h('details', { class: 'op' },
          h('summary', {}, h('span', { class: 'method ' + method, text: method.toUpperCase() }), h('code', { text: path }), h('span', { class: 'muted', text: op.summary || '' }), outside ? badge('not in your plan', 'void') : null),
          op.description ? markdown(op.description) : null,
          params.length ? table(['Parameter', 'In', 'Required', 'Description'], params.map((p) => h('tr', {},
            h('td', { class: 'mono', text: p.name || p.$ref || '' }), h('td', { text: p.in || '' }), h('td', { text: p.required ? 'yes' : 'no' }), h('td', { text: p.description || '' }))), 'Parameters') : null,
          op.requestBody ? h('p', {}, h('strong', { text: 'Request body: ' }), Object.keys(op.requestBody.content || {}).join(', ')) : null,
          table(['Response', 'Description'], Object.entries(op.responses || {}).map(([code, r]) => h('tr', {}, h('td', { class: 'mono', text: code }), h('td', { text: (r && r.description) || '' }))), 'Responses')));
      }
    }
    page(`${info.title || name} ${version}`,
      h('p', {}, link('/app/apis', '← All APIs'), ' · OpenAPI ', doc.openapi || doc.swagger || '?', info.version ? ` · document version ${info.version}` : ''),
      warn,
      notIncluded,
      info.description ? markdown(info.description) : null,
      baseBox,
      h('section', { class: 'panel' }, h('h2', { text: `Operations (${ops.length})` }), ...ops));
  }

  // ---------- routing ----------

  async function render() {
    destroyCharts();
    // A message is about the page it was shown on.
    clearTimeout(toast.timer);
    toastBox.textContent = '';
    const path = location.pathname.replace(/\/$/, '');
    if (path === '/sign-in') return signInPage();
    drawNav();
    const m = (re) => path.match(re);
    let r;
    try {
      if (path === '/app' || path === '') await (session.role === 'partner' ? usagePage(session.partner_id) : partnersPage());
      else if (path === '/app/keys' && session.role === 'partner') await keysPage(session.partner_id);
      else if (path === '/app/invoices') await invoicesPage();
      else if ((r = m(/^\/app\/invoices\/([^/]+)$/))) await invoicePage(decodeURIComponent(r[1]));
      else if (path === '/app/apis') await apisPage();
      else if (path === '/app/webhooks' && session.role !== 'partner') await webhooksPage();
      else if ((r = m(/^\/app\/apis\/([^/]+)\/([^/]+)$/))) await apiDocPage(decodeURIComponent(r[1]), decodeURIComponent(r[2]));
      else if ((r = m(/^\/app\/partners\/([^/]+)$/)) && session.role !== 'partner') await usagePage(decodeURIComponent(r[1]));
      else page('Not found', h('p', {}, 'There is no such page. ', link('/app', 'Back to the start')));
    } catch (e) {
      page('Something went wrong', h('div', { class: 'error', role: 'alert', text: e.status === 404 ? 'Not found.' : e.message }));
    }
  }

  async function start() {
    if (location.pathname === '/sign-in') {
      // Already signed in and no new link: go to the dashboard.
      if (!location.hash.includes('token=')) {
        try { session = await api('/v1/session', { allow401: true }); history.replaceState({}, '', '/app'); } catch (_) { return signInPage(); }
      } else {
        return signInPage();
      }
    }
    try {
      session = await api('/v1/session', { allow401: true });
    } catch (e) {
      if (e.status === 401) { history.replaceState({}, '', '/sign-in'); return signInPage(); }
      return fail(main, e);
    }
    await render();
  }

  start();
})();
