// The dashboard: a page of views (overview, logs, events, runs, metrics, Redis, fleet)
// chosen by the URL's fragment, over one store kept current by the daemon's event stream.

import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { useSignal } from './signal.js';
import { loggedOut } from './api.js';
import { start, connected, health, nodes, error } from './store.js';
import { ConfirmDialog, Toast } from './ui.jsx';
import { Overview } from './views/overview.jsx';
import { Logs } from './views/logs.jsx';
import { Events } from './views/events.jsx';
import { Runs } from './views/runs.jsx';
import { Metrics } from './views/metrics.jsx';
import { Redis } from './views/redis.jsx';
import { Fleet } from './views/fleet.jsx';
import './style.css';

const VIEWS = [
  ['overview', 'Overview', Overview],
  ['logs', 'Logs', Logs],
  ['events', 'Events', Events],
  ['runs', 'Runs', Runs],
  ['metrics', 'Metrics', Metrics],
  ['redis', 'Redis', Redis],
  ['fleet', 'Fleet', Fleet],
];

const route = () => (location.hash.replace(/^#\/?/, '').split('?')[0] || 'overview');

function Login() {
  return (
    <main class="login">
      <h1>corral</h1>
      <p>This browser is not logged in to the daemon.</p>
      <p>
        Open the one-time login link the daemon printed when it started, or make a new one on the daemon's machine:
      </p>
      <pre>corral login</pre>
    </main>
  );
}

function theme(t) {
  document.documentElement.dataset.theme = t;
  try {
    localStorage.setItem('corral-theme', t);
  } catch {
    /* private mode */
  }
}

function App() {
  const [r, setR] = useState(route);
  const out = useSignal(loggedOut);
  const live = useSignal(connected);
  const h = useSignal(health);
  const hub = useSignal(nodes);
  const err = useSignal(error);
  const [dark, setDark] = useState(document.documentElement.dataset.theme === 'dark');
  useEffect(() => {
    const on = () => setR(route());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  useEffect(() => {
    document.title = `corral${h ? ' · ' + h.node : ''} · ${r}`;
  }, [r, h]);
  if (out) return <Login />;
  const views = VIEWS.filter(([id]) => id !== 'fleet' || hub);
  const View = (VIEWS.find(([id]) => id === r) || VIEWS[0])[2];
  return (
    <>
      <header class="top">
        <a class="brand" href="#/overview">corral</a>
        <span class="node-name">{h ? h.node : ''}</span>
        <nav aria-label="views">
          {views.map(([id, label]) => (
            <a key={id} href={`#/${id}`} aria-current={r === id ? 'page' : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <span class={live ? 'live on' : 'live'} title={live ? 'live: events arrive as they happen' : 'reconnecting'}>
          {live ? 'live' : 'offline'}
        </span>
        <button type="button" class="theme" onClick={() => {
            theme(dark ? 'light' : 'dark');
            setDark(!dark);
          }} aria-label="switch light or dark">
          {dark ? '☀' : '☾'}
        </button>
      </header>
      <main id="main" class={`view-${r}`}>
        {err ? <p class="error-text">{err}</p> : null}
        <View />
      </main>
      <ConfirmDialog />
      <Toast />
    </>
  );
}

let saved = null;
try {
  saved = localStorage.getItem('corral-theme');
} catch {
  /* private mode */
}
document.documentElement.dataset.theme = saved || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light');
render(<App />, document.getElementById('app'));
start();
