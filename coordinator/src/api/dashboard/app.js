// The Musketeer dashboard: draws the snapshots the coordinator sends over
// server-sent events (/dashboard/events), and calls the API's own routes
// for actions, with the session's CSRF token. No library, no build step;
// every value from the server is set as text, never parsed as HTML.
'use strict';

(function () {
  const role = document.body.dataset.role;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const canAct = role === 'admin' && csrf !== '';
  const view = { state: '', kernel: '', queue: '', q: '', offset: 0, job: '' };
  let tab = 'overview';
  let pageSize = 25;
  let source = null;

  // A DOM element: attributes (`text` sets its text), then children.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k === 'onclick') e.addEventListener('click', v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  const $ = (id) => document.getElementById(id);
  function fill(table, head, rows) {
    table.replaceChildren(
      el('thead', {}, el('tr', {}, ...head.map(([h, cls]) => el('th', { class: cls, text: h })))),
      el('tbody', {}, ...rows));
  }
  function td(text, cls) { return el('td', { class: cls, text }); }

  function ago(now, then) {
    const s = Math.max(0, Math.round((now - then) / 1000));
    if (s < 60) return s + 's ago';
    if (s < 3600) return Math.round(s / 60) + 'm ago';
    return Math.round(s / 3600) + 'h ago';
  }
  function when(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC' : '-'; }
  function mib(bytes) { return (bytes / 1048576).toFixed(0) + ' MiB'; }

  // A progress bar, readable by people and by tests (aria values).
  function progressBar(p, wide) {
    const pct = p.total ? Math.floor(100 * p.done / p.total) : 0;
    const fillEl = el('div', { class: 'fill' });
    fillEl.style.width = pct + '%';
    return el('div', {
      class: wide ? 'bar wide progress' : 'bar progress', role: 'progressbar',
      'aria-valuemin': 0, 'aria-valuemax': p.total, 'aria-valuenow': p.done,
      title: p.done + ' of ' + p.total + ' tasks done',
    }, fillEl);
  }

  function flash(message) {
    const f = $('flash');
    f.textContent = message;
    f.hidden = !message;
  }

  // Calls an API route that changes state, as the logged-in admin.
  async function act(method, path, done) {
    const r = await fetch(path, { method, credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf } });
    if (!r.ok) {
      let message = r.status + ' ' + r.statusText;
      try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      flash(message);
      return;
    }
    flash('');
    flash(done);
    setTimeout(() => flash(''), 3000);
  }
  function action(label, method, path, done, confirmText, id) {
    if (!canAct) return null;
    return el('button', {
      type: 'button', class: 'danger', id, text: label,
      onclick: () => { if (!confirmText || window.confirm(confirmText)) act(method, path, done); },
    });
  }

  function drawThroughput(series) {
    const w = 720, h = 140, pad = 24;
    const max = Math.max(1, ...series);
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', 'results per second over the last hour');
    const step = (w - pad) / Math.max(1, series.length - 1);
    const points = series.map((v, i) => `${(pad + i * step).toFixed(1)},${(h - 14 - (h - 28) * v / max).toFixed(1)}`);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', points.join(' '));
    svg.append(line);
    for (const [y, label] of [[14, max.toFixed(1) + '/s'], [h - 14, '0']]) {
      const t = document.createElementNS(ns, 'text');
      t.setAttribute('x', 2); t.setAttribute('y', y); t.textContent = label;
      svg.append(t);
    }
    const now = series.length ? series[series.length - 1] : 0;
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', w - 90); t.setAttribute('y', 14); t.textContent = 'now ' + now.toFixed(1) + '/s';
    svg.append(t);
    $('throughput').replaceChildren(svg);
  }

  function renderOverview(s) {
    const o = s.overview;
    $('ov-agents').textContent = o.agents_online;
    $('ov-cores').textContent = o.cores;
    $('ov-pending').textContent = o.tasks_pending;
    $('ov-leased').textContent = o.tasks_leased;
    fill($('ov-arch'), [['architecture'], ['agents', 'num']],
      Object.entries(o.agents_by_arch).map(([a, n]) => el('tr', {}, td(a), td(n, 'num'))));
    fill($('ov-states'), [['state'], ['jobs', 'num']],
      Object.entries(o.jobs_by_state).map(([st, n]) => el('tr', {}, td(st, 'state-' + st), td(n, 'num'))));
    fill($('ov-queues'), [['queue'], ['open jobs', 'num'], ['tasks left', 'num']],
      s.queues.map((q) => el('tr', {}, td(q.name), td(q.open_jobs, 'num'), td(q.tasks_left, 'num'))));
    drawThroughput(s.throughput);
  }

  function jobRow(j) {
    return el('tr', { id: 'job-' + j.id, class: 'job-row' },
      td('', 'mono'), td(j.kernel), td(j.queue), td(j.state, 'state state-' + j.state),
      el('td', {}, progressBar(j.progress), ' ', j.progress.done + '/' + j.progress.total),
      td(when(j.created_ms)));
  }

  // Fills a filter's choices, only when they change, keeping what the user
  // has picked but not applied yet.
  function options(select, values) {
    const key = values.join('\n');
    if (select.dataset.key === key) return;
    const picked = select.value;
    const first = select.options[0];
    select.replaceChildren(first, ...values.map((v) => el('option', { value: v, text: v })));
    select.value = values.includes(picked) ? picked : '';
    select.dataset.key = key;
  }

  function renderJobs(s) {
    const page = s.jobs;
    pageSize = page.page_size;
    options($('f-kernel'), page.kernels);
    options($('f-queue'), page.queues);
    const rows = page.items.map((j) => {
      const row = jobRow(j);
      row.firstChild.append(el('a', { href: '#/job/' + encodeURIComponent(j.id), text: j.id }));
      return row;
    });
    fill($('jobs-table'), [['id'], ['kernel'], ['queue'], ['state'], ['progress'], ['submitted']], rows);
    const last = Math.min(page.offset + page.items.length, page.matching);
    $('page-info').textContent = page.matching ? `${page.offset + 1} to ${last} of ${page.matching}` : 'no jobs match';
    $('prev').disabled = page.offset === 0;
    $('next').disabled = last >= page.matching;
  }

  function reasonsList(why) {
    if (!why.reasons.length) return el('p', { class: 'muted', text: why.waiting ? 'nothing blocks it' : 'no task waits' });
    return el('ul', { class: 'reasons' }, ...why.reasons.map((r) => el('li', { 'data-code': r.code, text: r.message })));
  }

  // A replicated job's returned replica's vote, as a word.
  function verdict(t) {
    if (t.agreed === true) return 'agreed';
    if (t.agreed === false) return 'outvoted';
    return t.state === 'done' ? 'undecided' : '';
  }

  // A job's sampled task replicas (the server picks and orders them).
  function tasksTable(tasks, total) {
    const replicated = tasks.some((t) => t.replica > 0 || t.agreed !== null);
    const head = [['task', 'num']].concat(replicated ? [['replica', 'num']] : [],
      [['state'], ['attempts', 'num'], ['agent']], replicated ? [['vote']] : [], [['error']]);
    const rows = tasks.map((t) => el('tr', { class: 'task-row', id: `task-${t.index}-${t.replica}`, 'data-state': t.state },
      td(t.index, 'num'), replicated ? td(t.replica, 'num') : null, td(t.state, 'state-' + t.state),
      td(t.attempts, 'num'), td(t.agent || '-', 'mono'), replicated ? td(verdict(t), 'vote') : null,
      td(t.error || '', 'error')));
    const table = el('table', { id: 'tasks-table' });
    fill(table, head, rows);
    const shown = new Set(tasks.map((t) => t.index)).size;
    return el('div', {}, table,
      shown < total ? el('p', { class: 'muted', text: `${shown} of ${total} tasks shown, failures first` }) : null);
  }

  function renderJob(s) {
    const box = $('job-view');
    if (!s.job) {
      box.replaceChildren(el('p', { text: view.job ? 'No job ' + view.job + '.' : '' }));
      return;
    }
    const j = s.job.status;
    const open = j.state === 'queued' || j.state === 'running';
    box.replaceChildren(
      el('h2', {}, 'Job ', el('span', { class: 'mono', id: 'job-id', text: j.id })),
      el('p', {}, el('span', { id: 'job-state', class: 'state-' + j.state, text: j.state }),
        ' · ', j.kernel, ' · queue ', j.queue, ' · priority ', String(j.priority)),
      progressBar(j.progress, true),
      el('dl', { class: 'facts' },
        el('dt', { text: 'tasks' }), el('dd', { id: 'job-counts', text: `${j.progress.done} done, ${j.progress.failed} failed, ${s.job.why.leased} running, ${s.job.why.waiting} waiting, ${j.progress.total} in all` }),
        el('dt', { text: 'submitted' }), el('dd', { text: when(j.created_ms) }),
        el('dt', { text: 'first task leased' }), el('dd', { text: when(j.started_ms) }),
        el('dt', { text: 'finished' }), el('dd', { text: when(j.finished_ms) }),
        el('dt', { text: 'error' }), el('dd', { class: 'error', text: j.error || '-' })),
      el('h2', { text: 'Tasks' }),
      tasksTable(s.job.tasks, j.progress.total),
      el('h2', { text: 'Why it waits' }),
      el('div', { id: 'why' }, reasonsList(s.job.why)),
      el('p', {},
        open ? action('Cancel job', 'DELETE', '/v1/jobs/' + encodeURIComponent(j.id), 'Job cancelled.', 'Cancel job ' + j.id + '?', 'cancel-job') : null,
        // A workflow's step is not retried (the API says so): no button.
        j.state === 'failed' && !j.workflow ? action('Retry failed tasks', 'POST', '/v1/jobs/' + encodeURIComponent(j.id) + '/retry', 'Failed tasks queued again.', 'Retry the failed tasks of job ' + j.id + '? Its done tasks are kept.', 'retry-job') : null,
        ' ',
        j.state === 'succeeded' ? el('a', { href: '/v1/jobs/' + encodeURIComponent(j.id) + '/result', id: 'download', download: j.id + '.json', text: 'Download the result' }) : null));
  }

  function renderAgents(s) {
    const rows = s.agents.map((a) => {
      const c = a.capacity;
      const labels = Object.entries(c.labels || {}).map(([k, v]) => k + '=' + v).join(', ');
      const live = a.state === 'active' || a.state === 'draining';
      return el('tr', { id: 'agent-' + a.id, class: 'agent-row' },
        td(a.id, 'mono'), td(c.hostname), td(c.arch), td(c.version), td(c.cpus, 'num'), td(mib(c.memory_bytes), 'num'),
        td(labels || '-'), td((c.queues || []).join(', ') || 'default'), td(a.state), td(ago(s.now_ms, a.last_seen_ms)),
        td(a.leased, 'num'), td(a.tasks_done, 'num'), td((a.cpu_ms / 1000).toFixed(1) + ' s', 'num'),
        td(a.trust + (a.results_invalid ? ` (${a.results_invalid} of ${a.results_invalid + a.results_valid} outvoted)` : '')),
        el('td', {},
          live && a.state === 'active' ? action('Drain', 'POST', '/v1/agents/' + encodeURIComponent(a.id) + '/drain', 'Agent draining.', null, 'drain-' + a.id) : null,
          ' ',
          live ? action('Remove', 'DELETE', '/v1/agents/' + encodeURIComponent(a.id), 'Agent removed; its tasks went back to the queue.', 'Remove agent ' + a.id + '? Its credential stops working.', 'remove-' + a.id) : null));
    });
    fill($('agents-table'), [['id'], ['host'], ['arch'], ['version'], ['cpus', 'num'], ['memory', 'num'], ['labels'], ['queues'],
      ['state'], ['last seen'], ['running', 'num'], ['tasks done', 'num'], ['cpu time', 'num'], ['trust'], ['']], rows);
  }

  function renderQueues(s) {
    const box = $('queues-view');
    if (!s.queues.length) {
      box.replaceChildren(el('p', { text: 'No open jobs.' }));
      return;
    }
    box.replaceChildren(...s.queues.map((q) => el('div', { class: 'queue', id: 'queue-' + q.name },
      el('h2', { text: `${q.name}: ${q.open_jobs} open jobs, ${q.tasks_left} tasks left` }),
      el('table', {}, el('tbody', {}, ...q.waiting.map((w) => el('tr', { class: 'waiting', id: 'waiting-' + w.id },
        el('td', { class: 'mono' }, el('a', { href: '#/job/' + encodeURIComponent(w.id), text: w.id })),
        td(w.state), td(w.waiting + ' waiting', 'num'), el('td', {}, reasonsList(w)))))))));
  }

  function renderModules(s) {
    fill($('modules-table'), [['id'], ['size', 'num'], ['uploaded'], ['reduce'], ['in use'], ['']],
      s.modules.map((m) => el('tr', { class: 'module-row', id: 'module-' + m.id },
        td(m.id, 'mono'), td((m.size / 1024).toFixed(1) + ' KiB', 'num'), td(when(m.created_ms)),
        td(m.has_reduce ? 'yes' : 'no'), td(m.in_use ? 'yes' : 'no'),
        el('td', {}, action('Delete', 'DELETE', '/v1/modules/' + encodeURIComponent(m.id), 'Module deleted.',
          'Delete module ' + m.id + '?', 'delete-module-' + m.id)))));
  }

  function renderWorkflows(s) {
    const box = $('workflows-view');
    if (!s.workflows.length) {
      box.replaceChildren(el('p', { text: 'No workflows.' }));
      return;
    }
    box.replaceChildren(...s.workflows.map((w) => el('div', { class: 'workflow', id: 'workflow-' + w.id },
      el('h2', {}, 'Workflow ', el('span', { class: 'mono', text: w.id }), ' ',
        el('span', { class: 'wf-state state-' + w.state, text: w.state }), ' · submitted ' + when(w.created_ms)),
      el('table', {}, el('thead', {}, el('tr', {}, ...['step', 'state', 'needs', 'progress', 'job', 'error'].map((h) => el('th', { text: h })))),
        el('tbody', {}, ...Object.entries(w.steps).map(([name, st]) => el('tr', { class: 'step-row', 'data-step': name },
          td(name), td(st.state, 'state state-' + st.state), td(st.needs.join(', ') || '-'),
          el('td', {}, progressBar(st.progress), ' ', st.progress.done + '/' + st.progress.total),
          el('td', { class: 'mono' }, el('a', { href: '#/job/' + encodeURIComponent(st.job), text: st.job })),
          td(st.error || '', 'error'))))))));
  }

  function renderSchedules(s) {
    fill($('schedules-table'), [['id'], ['cron'], ['time zone'], ['kernel'], ['next run'], ['state'], ['last jobs'], ['']],
      s.schedules.map((sc) => {
        const path = '/v1/schedules/' + encodeURIComponent(sc.id);
        return el('tr', { class: 'schedule-row', id: 'schedule-' + sc.id },
          td(sc.id, 'mono'), td(sc.cron, 'mono'), td(sc.timezone), td((sc.job && sc.job.kernel) || '-'),
          td(sc.paused ? '-' : when(sc.next_run_ms)), td(sc.paused ? 'paused' : 'active', 'schedule-state'),
          el('td', {}, ...sc.last_jobs.map((j) => el('div', {},
            el('a', { class: 'mono', href: '#/job/' + encodeURIComponent(j.id), text: j.id }), ' ',
            el('span', { class: 'state-' + (j.state || ''), text: j.state || 'starting' })))),
          el('td', {}, sc.paused
            ? action('Resume', 'POST', path + '/resume', 'Schedule resumed.', null, 'resume-' + sc.id)
            : action('Pause', 'POST', path + '/pause', 'Schedule paused.', null, 'pause-' + sc.id)));
      }));
  }

  function renderTokens(s) {
    fill($('tokens-table'), [['id'], ['role'], ['created'], ['state'], ['agents enrolled', 'num']],
      (s.tokens || []).map((t) => el('tr', {}, td(t.id, 'mono'), td(t.role), td(when(t.created_ms)),
        td(t.revoked ? 'revoked' : 'active'), td(t.uses, 'num'))));
  }

  function render(s) {
    const d = $('degraded');
    d.textContent = s.degraded ? 'Degraded: ' + s.degraded : '';
    d.hidden = !s.degraded;
    renderOverview(s);
    renderJobs(s);
    renderJob(s);
    renderAgents(s);
    renderQueues(s);
    renderModules(s);
    renderWorkflows(s);
    renderSchedules(s);
    renderTokens(s);
  }

  function setLive(on) {
    const l = $('live');
    l.textContent = on ? 'live' : 'reconnecting';
    l.classList.toggle('off', !on);
  }

  // (Re)opens the event stream for the current view.
  function connect() {
    if (source) source.close();
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(view)) if (v !== '' && v !== 0) params.set(k, v);
    source = new EventSource('/dashboard/events?' + params.toString());
    source.addEventListener('snapshot', (e) => { setLive(true); render(JSON.parse(e.data)); });
    source.addEventListener('problem', (e) => flash(e.data));
    source.onerror = () => setLive(false);
  }

  function route() {
    const parts = (location.hash || '#/overview').replace(/^#\/?/, '').split('/');
    tab = parts[0] || 'overview';
    view.job = tab === 'job' ? decodeURIComponent(parts[1] || '') : '';
    for (const s of document.querySelectorAll('section.tab')) s.hidden = s.id !== 'tab-' + tab;
    for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.tab === tab);
    connect();
  }

  $('filters').addEventListener('submit', (e) => {
    e.preventDefault();
    view.state = $('f-state').value;
    view.kernel = $('f-kernel').value;
    view.queue = $('f-queue').value;
    view.q = $('f-q').value.trim();
    view.offset = 0;
    connect();
  });
  $('prev').addEventListener('click', () => { view.offset = Math.max(0, view.offset - pageSize); connect(); });
  $('next').addEventListener('click', () => { view.offset += pageSize; connect(); });
  window.addEventListener('hashchange', route);
  route();
}());
