// Rules and routes, for the Admin page: each listed with its live status,
// the actions the caller may take, and a JSON editor to create one (the
// API's body, so every option of the API is available here).

import { useState } from 'preact/hooks';
import { enc, get, patch, post } from '../api';
import { useSession } from '../app';
import { fmtTime, useLoad } from '../util';

function JsonCreate({ what, path, example, onDone }: { what: string; path: string; example: object; onDone: () => void }) {
  const [open, setOpen] = useState(false);
  const [text, setText] = useState(JSON.stringify(example, null, 2));
  const [error, setError] = useState<string | null>(null);
  if (!open) {
    return (
      <button class="ghost" onClick={() => setOpen(true)}>
        New {what}…
      </button>
    );
  }
  const submit = async (e: Event) => {
    e.preventDefault();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch (err: any) {
      setError(`not JSON: ${err.message}`);
      return;
    }
    try {
      await post(path, body);
      setError(null);
      setOpen(false);
      onDone();
    } catch (err: any) {
      setError(err.message);
    }
  };
  return (
    <form class="json-create" onSubmit={submit} aria-label={`New ${what}`}>
      <textarea aria-label={`${what} definition (JSON)`} rows={12} value={text} onInput={(e) => setText(e.currentTarget.value)} spellcheck={false} />
      {error && (
        <p class="error" role="alert" data-testid={`${what}-error`}>
          {error}
        </p>
      )}
      <div class="inline-form">
        <button type="submit">Create {what}</button>
        <button type="button" class="ghost" onClick={() => setOpen(false)}>
          Cancel
        </button>
      </div>
    </form>
  );
}

export function Rules() {
  const s = useSession();
  const write = s.can('rules:write');
  const list = useLoad(() => get<{ value: any[] }>('/api/v1/rules?limit=1000').then((r) => r.value), []);
  const [error, setError] = useState<string | null>(null);
  const toggle = async (r: any) => {
    try {
      await patch(`/api/v1/rules/${enc(r.id)}`, { enabled: !r.enabled });
      list.reload();
    } catch (e: any) {
      setError(e.message);
    }
  };
  return (
    <>
      {write && (
        <JsonCreate
          what="rule"
          path="/api/v1/rules"
          onDone={list.reload}
          example={{
            name: 'Reactor above 375 K for 30 s',
            select: { model: 'dtmi:twinhub:plant:Reactor;1' },
            condition: 'temperature > 375',
            clear: 'temperature < 370',
            for: '30s',
            alarm: { type: 'ReactorOverheat', severity: 'major' },
          }}
        />
      )}
      {(error || list.error) && (
        <p class="error" role="alert">
          {error ?? list.error}
        </p>
      )}
      <table aria-label="Rules">
        <thead>
          <tr>
            <th>Rule</th>
            <th>Kind</th>
            <th>Selects</th>
            <th>Version</th>
            <th>State</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(list.data ?? []).map((r) => (
            <tr data-rule={r.id}>
              <td>
                <b>{r.id}</b> <span class="muted">{r.name}</span>
              </td>
              <td>{r.kind ?? 'condition'}</td>
              <td class="muted">{JSON.stringify(r.select)}</td>
              <td>{r.version}</td>
              <td>{r.enabled ? 'enabled' : 'disabled'}</td>
              <td>
                {write && (
                  <button class="ghost" onClick={() => void toggle(r)}>
                    {r.enabled ? 'Disable' : 'Enable'}
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

export function Routes() {
  const s = useSession();
  const write = s.can('routes:write');
  const list = useLoad(() => get<{ value: any[] }>('/api/v1/routes?limit=1000').then((r) => r.value), []);
  const [note, setNote] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const act = async (f: () => Promise<any>, done?: (r: any) => string) => {
    try {
      setError(null);
      const r = await f();
      setNote(done ? done(r) : null);
      list.reload();
    } catch (e: any) {
      setError(e.message);
    }
  };
  return (
    <>
      <div class="inline-form">
        {write && (
          <JsonCreate
            what="route"
            path="/api/v1/routes"
            onDone={list.reload}
            example={{
              id: 'erp',
              select: { types: ['alarm'] },
              sink: { kind: 'webhook', url: 'https://erp.example.com/hook' },
              batch: { max: 100, linger: '100ms' },
            }}
          />
        )}
        <button class="ghost" onClick={list.reload}>
          Refresh
        </button>
      </div>
      {note && <p role="status">{note}</p>}
      {(error || list.error) && (
        <p class="error" role="alert">
          {error ?? list.error}
        </p>
      )}
      <table aria-label="Routes">
        <thead>
          <tr>
            <th>Route</th>
            <th>Sink</th>
            <th>Status</th>
            <th>Lag</th>
            <th>Delivered</th>
            <th>Retried</th>
            <th>Dead letters</th>
            <th>Last error</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(list.data ?? []).map((r) => (
            <tr data-route={r.id}>
              <td>
                <b>{r.id}</b>
              </td>
              <td>{r.sink?.kind}</td>
              <td class={`route-${r.status}`} data-testid={`route-status-${r.id}`}>
                {r.status}
              </td>
              <td>{r.lag?.events ?? 0}</td>
              <td>{r.delivered}</td>
              <td>{r.retried}</td>
              <td>{r.dead_letters}</td>
              <td class="muted" title={r.last_error ? fmtTime(r.last_error.at) : ''}>
                {r.last_error?.message ?? ''}
              </td>
              <td class="actions">
                {write && (
                  <>
                    <button class="ghost" onClick={() => void act(() => patch(`/api/v1/routes/${enc(r.id)}`, { paused: r.status !== 'paused' }))}>
                      {r.status === 'paused' ? 'Resume' : 'Pause'}
                    </button>
                    <button
                      class="ghost"
                      onClick={() =>
                        void act(
                          () => post(`/api/v1/routes/${enc(r.id)}/test`),
                          (t) => (t.delivered ? `Test event delivered to ${r.id}.` : `Test event to ${r.id} failed: ${t.error}`),
                        )
                      }
                    >
                      Test
                    </button>
                    {r.dead_letters > 0 && (
                      <button class="ghost" onClick={() => void act(() => post(`/api/v1/routes/${enc(r.id)}/deadletters/replay`), () => `Replaying ${r.id}'s dead letters.`)}>
                        Replay
                      </button>
                    )}
                  </>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
