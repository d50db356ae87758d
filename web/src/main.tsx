import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { events, get, logout, onAuthChange, signedIn, type Me } from './api';
import { href, session, SessionContext, useRoute, type Session } from './app';
import './style.css';
import 'uplot/dist/uPlot.min.css';
import { Login } from './views/login';
import { Fleet } from './views/fleet';
import { TwinView } from './views/twin';
import { Alarms } from './views/alarms';
import { WhatIf } from './views/whatif';
import { GraphView } from './views/graph';
import { Admin } from './views/admin';

function Shell({ s }: { s: Session }) {
  const route = useRoute();
  const [live, setLive] = useState(events.connected);
  useEffect(() => events.onStatus(setLive), []);
  const nav: [string, string, boolean][] = [
    ['fleet', 'Fleet', s.can('twins:read')],
    ['alarms', 'Alarms', s.can('alarms:read')],
    ['whatif', 'What-if', s.can('ml:read')],
    ['graph', 'Graph', s.can('twins:read')],
    ['admin', 'Admin', ['devices:read', 'models:read', 'ml:read', 'rules:read', 'routes:read', 'users:admin', 'apikeys:admin'].some(s.can)],
  ];
  const [page, ...rest] = route;
  let body;
  switch (page) {
    case 'twin':
      body = <TwinView id={rest[0] ?? ''} />;
      break;
    case 'alarms':
      body = <Alarms />;
      break;
    case 'whatif':
      body = <WhatIf model={rest[0]} twin={rest[1]} />;
      break;
    case 'graph':
      body = <GraphView root={rest[0]} />;
      break;
    case 'admin':
      body = <Admin tab={rest[0] ?? 'devices'} />;
      break;
    default:
      body = <Fleet />;
  }
  return (
    <div class="shell">
      <header class="top">
        <a class="brand" href={href('fleet')}>
          twinhub
        </a>
        <nav aria-label="Main">
          {nav
            .filter(([, , ok]) => ok)
            .map(([id, label]) => (
              <a href={href(id)} class={page === id || (id === 'fleet' && page === 'twin') ? 'active' : ''} aria-current={page === id ? 'page' : undefined}>
                {label}
              </a>
            ))}
        </nav>
        <span class="spacer" />
        <span class={`live ${live ? 'up' : 'down'}`} title={live ? 'live updates connected' : 'live updates reconnecting'} data-testid="live">
          {live ? '● live' : '○ offline'}
        </span>
        <span class="who" data-testid="who">
          {s.me.name} <small>({s.me.roles.join(', ') || s.me.kind})</small>
        </span>
        <button class="ghost" onClick={() => void logout()}>
          Log out
        </button>
      </header>
      <main>{body}</main>
    </div>
  );
}

function Root() {
  const [authed, setAuthed] = useState(signedIn());
  const [me, setMe] = useState<Session | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => onAuthChange(() => setAuthed(signedIn())), []);
  useEffect(() => {
    if (!authed) {
      setMe(null);
      events.stop();
      return;
    }
    get<Me>('/api/v1/auth/me').then(
      (m) => {
        setMe(session(m));
        events.start();
      },
      (e) => setError(e.message),
    );
  }, [authed]);
  if (!authed) return <Login />;
  if (!me) return <p class="loading">{error ?? 'Loading…'}</p>;
  return (
    <SessionContext.Provider value={me}>
      <Shell s={me} />
    </SessionContext.Provider>
  );
}

render(<Root />, document.getElementById('app')!);
