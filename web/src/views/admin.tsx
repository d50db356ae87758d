// Administration: devices, DTDL models, ML models, users and API keys.
// Each tab and each action appears only where `/auth/me` says the API
// would allow it; the API still checks every call.

import { useState } from 'preact/hooks';
import { ApiError, del, enc, get, listAll, patch, post, put, request } from '../api';
import { href, useSession } from '../app';
import { fmtAgo, fmtTime, useLoad } from '../util';
import { Routes, Rules } from './automation';

const TABS: [string, string, string][] = [
  ['devices', 'Devices', 'devices:read'],
  ['models', 'DTDL models', 'models:read'],
  ['ml', 'ML models', 'ml:read'],
  ['rules', 'Rules', 'rules:read'],
  ['routes', 'Routes', 'routes:read'],
  ['users', 'Users', 'users:admin'],
  ['apikeys', 'API keys', 'apikeys:admin'],
];

export function Admin({ tab }: { tab: string }) {
  const s = useSession();
  const tabs = TABS.filter(([, , perm]) => s.can(perm));
  const current = tabs.find(([id]) => id === tab)?.[0] ?? tabs[0]?.[0];
  return (
    <section class="admin">
      <div class="toolbar">
        <h2>Admin</h2>
        <nav class="seg" aria-label="Admin sections">
          {tabs.map(([id, label]) => (
            <a href={href('admin', id)} class={current === id ? 'active' : ''} aria-current={current === id ? 'page' : undefined}>
              {label}
            </a>
          ))}
        </nav>
      </div>
      {current === 'devices' && <Devices />}
      {current === 'models' && <Models />}
      {current === 'ml' && <MlModels />}
      {current === 'rules' && <Rules />}
      {current === 'routes' && <Routes />}
      {current === 'users' && <Users />}
      {current === 'apikeys' && <ApiKeys />}
      {!current && <p class="muted">Your role has no administration rights.</p>}
    </section>
  );
}

/** Runs an API action: clears the error, then reloads or shows why not. */
function useRun(setError: (e: string | null) => void, after: () => void) {
  return async (f: () => Promise<unknown>) => {
    try {
      setError(null);
      await f();
      after();
    } catch (e: any) {
      setError(e.message);
    }
  };
}

function Err({ e }: { e: string | null }) {
  return e ? (
    <p class="error" role="alert">
      {e}
    </p>
  ) : null;
}

/** A secret shown once, with a copy button. */
function Secret({ label, value, extra }: { label: string; value: string; extra?: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <div class="secret" role="status">
      <p>
        <b>{label}</b> — shown only now; copy it.
      </p>
      <code data-testid="secret">{value}</code>{' '}
      <button
        onClick={() => {
          void navigator.clipboard?.writeText(value).then(() => setCopied(true));
        }}
      >
        {copied ? 'Copied' : 'Copy'}
      </button>
      {extra && <pre class="cmd">{extra}</pre>}
    </div>
  );
}

function Devices() {
  const s = useSession();
  const admin = s.can('devices:admin');
  const list = useLoad(() => listAll<any>('/api/v1/devices'), []);
  const server = useLoad(() => get('/api/v1/server'), []);
  const [id, setId] = useState('');
  const [twin, setTwin] = useState('');
  const [secret, setSecret] = useState<{ id: string; key: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const run = useRun(setError, () => {
    list.reload();
  });
  const mqtt: string = server.data?.listeners?.mqtt ?? `${location.hostname}:1883`;
  const [mh, mp] = [mqtt.slice(0, mqtt.lastIndexOf(':')), mqtt.slice(mqtt.lastIndexOf(':') + 1)];
  const pubLine = (d: string, k: string) =>
    `mosquitto_pub -h ${mh} -p ${mp} -i ${d} -u ${d} -P '${k}' -q 1 -t devices/${d}/telemetry -m '{"temperature": 21.5}'`;
  return (
    <>
      {admin && (
        <form
          class="inline-form"
          aria-label="Create device"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              const d = await post('/api/v1/devices', { id: id.trim(), ...(twin.trim() ? { twin_id: twin.trim() } : {}) });
              setSecret({ id: d.id, key: d.key });
              setId('');
              setTwin('');
            });
          }}
        >
          <input aria-label="Device id" placeholder="device id" value={id} onInput={(e) => setId(e.currentTarget.value)} required />
          <input aria-label="Twin id" placeholder="twin id (optional)" value={twin} onInput={(e) => setTwin(e.currentTarget.value)} />
          <button type="submit">Create device</button>
        </form>
      )}
      {secret && <Secret label={`Key of ${secret.id}`} value={secret.key} extra={pubLine(secret.id, secret.key)} />}
      <Err e={error ?? list.error} />
      <table aria-label="Devices">
        <thead>
          <tr>
            <th>Device</th>
            <th>Twin</th>
            <th>State</th>
            <th>Last seen</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(list.data ?? []).map((d) => (
            <tr data-device={d.id}>
              <td>{d.id}</td>
              <td>
                <a href={href('twin', d.twin_id ?? d.id)}>{d.twin_id ?? d.id}</a>
              </td>
              <td>{!d.enabled ? 'disabled' : d.connected ? 'connected' : d.active ? 'active' : 'silent'}</td>
              <td title={fmtTime(d.last_seen)}>{fmtAgo(d.last_seen)}</td>
              <td class="actions">
                {admin && (
                  <>
                    <button
                      class="ghost"
                      onClick={() =>
                        void run(async () => {
                          const r = await post(`/api/v1/devices/${enc(d.id)}/key`, {});
                          setSecret({ id: d.id, key: r.key });
                        })
                      }
                    >
                      Rotate key
                    </button>
                    <button class="ghost" onClick={() => void run(() => patch(`/api/v1/devices/${enc(d.id)}`, { enabled: !d.enabled }))}>
                      {d.enabled ? 'Disable' : 'Enable'}
                    </button>
                    <button
                      class="ghost danger"
                      onClick={() => confirm(`Delete device ${d.id}?`) && void run(() => del(`/api/v1/devices/${enc(d.id)}`))}
                    >
                      Delete
                    </button>
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

function Models() {
  const s = useSession();
  const list = useLoad(() => listAll<any>('/api/v1/models'), []);
  const [error, setError] = useState<ApiError | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const upload = async (files: FileList | null) => {
    if (!files?.length) return;
    setError(null);
    setDone(null);
    const docs: unknown[] = [];
    try {
      for (const f of Array.from(files)) {
        if (!f.name.endsWith('.json')) continue;
        const parsed = JSON.parse(await f.text());
        if (Array.isArray(parsed)) docs.push(...parsed);
        else docs.push(parsed);
      }
    } catch (e: any) {
      setError(new ApiError(400, 'bad_request', `not JSON: ${e.message}`));
      return;
    }
    try {
      const r = await post<any[]>('/api/v1/models', docs);
      setDone(`Uploaded ${r.length} model${r.length === 1 ? '' : 's'}.`);
      list.reload();
    } catch (e: any) {
      setError(e);
    }
  };
  return (
    <>
      {s.can('models:write') && (
        <div class="inline-form">
          <label class="file">
            Upload DTDL files <input type="file" accept=".json,application/json" multiple aria-label="DTDL files" onChange={(e) => void upload(e.currentTarget.files)} />
          </label>
          <label class="file">
            or a folder <input type="file" {...({ webkitdirectory: '' } as any)} aria-label="DTDL folder" onChange={(e) => void upload(e.currentTarget.files)} />
          </label>
        </div>
      )}
      {done && <p role="status">{done}</p>}
      {error && (
        <div class="error" role="alert" data-testid="model-error">
          <p>{error.status === 422 ? 'The models were refused:' : error.message}</p>
          {Array.isArray(error.details) && (
            <ul>
              {error.details.map((d: any) => (
                <li>
                  <code>{d.interface}</code>
                  {d.element && (
                    <>
                      {' › '}
                      <code>{d.element}</code>
                    </>
                  )}
                  : {d.rule}
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
      <Err e={list.error} />
      <table aria-label="DTDL models">
        <thead>
          <tr>
            <th>Model</th>
            <th>Name</th>
            <th>Uploaded</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(list.data ?? []).map((m) => (
            <tr>
              <td>
                <code>{m.id}</code>
              </td>
              <td>{typeof m.displayName === 'object' && m.displayName ? (m.displayName.en ?? Object.values(m.displayName)[0]) : (m.displayName ?? '')}</td>
              <td>{fmtTime(m.uploadTime)}</td>
              <td>{m.decommissioned ? 'decommissioned' : ''}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function MlModels() {
  const s = useSession();
  const admin = s.can('ml:admin');
  const list = useLoad(() => get<{ value: any[] }>('/api/v1/ml/models').then((r) => r.value), []);
  const [open, setOpen] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [onnx, setOnnx] = useState<File | null>(null);
  const [manifest, setManifest] = useState<File | null>(null);
  const upload = async (e: Event) => {
    e.preventDefault();
    if (!onnx) return;
    const form = new FormData();
    if (onnx.name.endsWith('.zip') || onnx.name.endsWith('.tar') || !manifest) form.append('bundle', onnx);
    else {
      form.append('model', onnx);
      form.append('manifest', await manifest.text());
    }
    try {
      setError(null);
      await request('POST', '/api/v1/ml/models', form);
      list.reload();
    } catch (err: any) {
      setError(err.message);
    }
  };
  return (
    <>
      {admin && (
        <form class="inline-form" onSubmit={upload} aria-label="Upload ML model">
          <label class="file">
            ONNX model or bundle <input type="file" aria-label="ONNX model" onChange={(e) => setOnnx(e.currentTarget.files?.[0] ?? null)} />
          </label>
          <label class="file">
            manifest <input type="file" accept=".json" aria-label="Manifest" onChange={(e) => setManifest(e.currentTarget.files?.[0] ?? null)} />
          </label>
          <button type="submit" disabled={!onnx}>
            Upload
          </button>
        </form>
      )}
      <Err e={error ?? list.error} />
      <table aria-label="ML models">
        <thead>
          <tr>
            <th>Model</th>
            <th>Active</th>
            <th>A/B candidate</th>
            <th>Versions</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(list.data ?? []).map((m) => (
            <>
              <tr>
                <td>
                  <button class="link" aria-expanded={open === m.name} onClick={() => setOpen(open === m.name ? null : m.name)}>
                    {m.name}
                  </button>
                </td>
                <td>{m.active}</td>
                <td>{m.candidate ? `${m.candidate.version} (${Math.round(m.candidate.share * 100)} %)` : '—'}</td>
                <td>{m.versions.join(', ')}</td>
                <td>
                  <a href={href('whatif', m.name)}>What-if</a>
                </td>
              </tr>
              {open === m.name && (
                <tr class="detail">
                  <td colSpan={5}>
                    <MlDetail name={m.name} admin={admin} onChange={list.reload} />
                  </td>
                </tr>
              )}
            </>
          ))}
        </tbody>
      </table>
    </>
  );
}

function MlDetail({ name, admin, onChange }: { name: string; admin: boolean; onChange: () => void }) {
  const info = useLoad(() => get(`/api/v1/ml/models/${enc(name)}`), [name]);
  const [share, setShare] = useState(10);
  const [error, setError] = useState<string | null>(null);
  const run = useRun(setError, () => {
    info.reload();
    onChange();
  });
  if (!info.data) return <p class="loading">{info.error ?? 'Loading…'}</p>;
  const versions: Record<string, any> = info.data.version_details ?? {};
  return (
    <div>
      <Err e={error} />
      <table aria-label={`Versions of ${name}`}>
        <thead>
          <tr>
            <th>Version</th>
            <th>Kind</th>
            <th>Calls</th>
            <th>p50 / p99</th>
            <th>Created</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {Object.values(versions).map((v: any) => (
            <tr>
              <td>{v.version}</td>
              <td>{v.kind}</td>
              <td>{v.stats?.calls ?? 0}</td>
              <td>
                {v.stats?.latency_p50_ms ?? '—'} / {v.stats?.latency_p99_ms ?? '—'} ms
              </td>
              <td>{fmtTime(v.created_at)}</td>
              <td class="actions">
                {admin && v.version !== info.data.active && (
                  <>
                    <button class="ghost" onClick={() => void run(() => post(`/api/v1/ml/models/${enc(name)}/versions/${enc(v.version)}/activate`))}>
                      Activate
                    </button>
                    <button class="ghost" onClick={() => void run(() => put(`/api/v1/ml/models/${enc(name)}/ab`, { candidate: v.version, share: share / 100 }))}>
                      A/B {share} %
                    </button>
                  </>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {admin && (
        <div class="inline-form">
          <label class="inline">
            A/B share{' '}
            <input type="number" min={1} max={99} value={share} onInput={(e) => setShare(Number(e.currentTarget.value))} aria-label="A/B share percent" /> %
          </label>
          {info.data.candidate && (
            <button class="ghost" onClick={() => void run(() => del(`/api/v1/ml/models/${enc(name)}/ab`))}>
              End A/B test
            </button>
          )}
        </div>
      )}
    </div>
  );
}

function Users() {
  const list = useLoad(() => listAll<any>('/api/v1/users'), []);
  const roles = useLoad(() => get<{ value: any[] }>('/api/v1/roles').then((r) => r.value), []);
  const [form, setForm] = useState({ username: '', password: '', role: 'viewer' });
  const [error, setError] = useState<string | null>(null);
  const run = useRun(setError, () => {
    list.reload();
  });
  const roleNames: string[] = (roles.data ?? []).map((r: any) => r.name ?? r);
  return (
    <>
      <form
        class="inline-form"
        aria-label="Create user"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            await post('/api/v1/users', { username: form.username.trim(), password: form.password, roles: [form.role] });
            setForm({ username: '', password: '', role: form.role });
          });
        }}
      >
        <input aria-label="User name" placeholder="user name" value={form.username} onInput={(e) => setForm({ ...form, username: e.currentTarget.value })} required />
        <input aria-label="Password" type="password" placeholder="password (10+ characters)" autocomplete="new-password" value={form.password} onInput={(e) => setForm({ ...form, password: e.currentTarget.value })} required />
        <select aria-label="Role" value={form.role} onChange={(e) => setForm({ ...form, role: e.currentTarget.value })}>
          {(roleNames.length ? roleNames : ['tenant_admin', 'operator', 'viewer']).map((r) => (
            <option value={r}>{r}</option>
          ))}
        </select>
        <button type="submit">Create user</button>
      </form>
      <Err e={error ?? list.error} />
      <table aria-label="Users">
        <thead>
          <tr>
            <th>User</th>
            <th>Roles</th>
            <th>Created</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(list.data ?? []).map((u) => (
            <tr>
              <td>{u.username}</td>
              <td>{u.roles.join(', ')}</td>
              <td>{fmtTime(u.created_at)}</td>
              <td>
                <button class="ghost danger" onClick={() => confirm(`Delete user ${u.username}?`) && void run(() => del(`/api/v1/users/${enc(u.username)}`))}>
                  Delete
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function ApiKeys() {
  const list = useLoad(() => listAll<any>('/api/v1/apikeys'), []);
  const [name, setName] = useState('');
  const [role, setRole] = useState('viewer');
  const [secret, setSecret] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const run = useRun(setError, () => {
    list.reload();
  });
  return (
    <>
      <form
        class="inline-form"
        aria-label="Create API key"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            const k = await post('/api/v1/apikeys', { name: name.trim(), roles: [role] });
            setSecret(k.key);
            setName('');
          });
        }}
      >
        <input aria-label="Key name" placeholder="name, e.g. grafana" value={name} onInput={(e) => setName(e.currentTarget.value)} required />
        <select aria-label="Key role" value={role} onChange={(e) => setRole(e.currentTarget.value)}>
          {['viewer', 'operator', 'tenant_admin'].map((r) => (
            <option value={r}>{r}</option>
          ))}
        </select>
        <button type="submit">Create key</button>
      </form>
      {secret && <Secret label="API key" value={secret} />}
      <Err e={error ?? list.error} />
      <table aria-label="API keys">
        <thead>
          <tr>
            <th>Key</th>
            <th>Name</th>
            <th>Roles</th>
            <th>Last used</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(list.data ?? []).map((k) => (
            <tr>
              <td>
                <code>{k.id}</code>
              </td>
              <td>{k.name}</td>
              <td>{k.permissions ? k.permissions.join(', ') : k.roles.join(', ')}</td>
              <td>{fmtAgo(k.last_used)}</td>
              <td>
                {k.revoked ? (
                  'revoked'
                ) : (
                  <button class="ghost danger" onClick={() => void run(() => del(`/api/v1/apikeys/${enc(k.id)}`))}>
                    Revoke
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
