// One twin: its properties and telemetry with units and update times,
// live charts of every numeric value (from the event stream, no polling),
// history from server-side buckets with a range picker and zoom, its
// device's commands, and its open alarms.

import { useEffect, useMemo, useState } from 'preact/hooks';
import { enc, events, get, listAll, post } from '../api';
import { href, useSession, useTick } from '../app';
import { HistoryChart, LiveChart, RANGES, type LiveSeries } from '../chart';
import { flatten, fmtAgo, fmtValue, useLoad } from '../util';
import { AlarmBadges } from './fleet';

export interface Element {
  name: string;
  kind: string;
  schema?: string;
  unit?: string;
  displayName?: string;
  writable?: boolean;
  request?: { name: string; schema: string };
  target?: string | null;
}

/** `$metadata` lastUpdateTime per dotted path, components included. */
function updateTimes(twin: Record<string, any>, prefix = '', out: Record<string, string> = {}) {
  const meta = twin.$metadata ?? {};
  for (const [k, v] of Object.entries(meta)) {
    if (!k.startsWith('$') && v && typeof v === 'object' && typeof (v as any).lastUpdateTime === 'string')
      out[prefix + k] = (v as any).lastUpdateTime;
  }
  for (const [k, v] of Object.entries(twin)) {
    if (!k.startsWith('$') && v && typeof v === 'object' && !Array.isArray(v) && (v as any).$metadata) updateTimes(v, `${prefix}${k}.`, out);
  }
  return out;
}

type Feed = Map<string, Set<LiveSeries>>;

function toMs(ts: number | string): number {
  return typeof ts === 'number' ? ts : Date.parse(ts);
}

export function TwinView({ id }: { id: string }) {
  const s = useSession();
  useTick(5000);
  const twin = useLoad(() => get(`/api/v1/twins/${enc(id)}`), [id]);
  const modelId: string | undefined = twin.data?.$metadata?.$model;
  const model = useLoad<{ elements?: Element[]; displayName?: string } | null>(
    () => (modelId && s.can('models:read') ? get(`/api/v1/models/${enc(modelId)}`) : Promise.resolve(null)),
    [modelId],
  );
  const device = useLoad(
    async () => {
      if (!s.can('devices:read')) return null;
      const all = await listAll<any>('/api/v1/devices');
      return all.find((d) => (d.twin_id ?? d.id) === id) ?? null;
    },
    [id],
  );
  // Names with stored history: the chartable ones (properties set by
  // PATCH have no history; telemetry and derived values do).
  const series = useLoad<string[]>(
    () =>
      s.can('telemetry:read')
        ? get(`/api/v1/twins/${enc(id)}/telemetry`).then((r) => (r.value ?? r.series ?? []).map((x: any) => x.name ?? x))
        : Promise.resolve([]),
    [id],
  );
  const counts = useLoad(
    () => (s.can('alarms:read') ? get(`/api/v1/alarms/counts?originator=${enc(id)}`) : Promise.resolve(null)),
    [id],
  );
  const [live, setLive] = useState<Record<string, any>>({});
  const [liveTimes, setLiveTimes] = useState<Record<string, number>>({});
  const feeds = useMemo<Feed>(() => new Map(), [id]);

  useEffect(() => {
    setLive({});
    setLiveTimes({});
    let timer: number | undefined;
    return events.subscribe((e) => {
      if (e.twin !== id) return;
      if (e.type === 'telemetry') {
        const vals: Record<string, any> = {};
        const times: Record<string, number> = {};
        for (const m of e.data?.messages ?? []) {
          const flat = flatten(m.values ?? {});
          for (const [k, v] of Object.entries(flat)) {
            const val = v && typeof v === 'object' && 'value' in (v as any) ? (v as any).value : v;
            vals[k] = val;
            times[k] = toMs(m.ts);
            if (typeof val === 'number') feeds.get(k)?.forEach((f) => f.push(toMs(m.ts), val));
          }
        }
        setLive((l) => ({ ...l, ...vals }));
        setLiveTimes((l) => ({ ...l, ...times }));
      } else if (e.type === 'twin') {
        clearTimeout(timer);
        timer = window.setTimeout(twin.reload, 200);
      } else if (e.type === 'alarm') {
        counts.reload();
      }
    });
  }, [id]);

  if (twin.error) return <p class="error" role="alert">{twin.error}</p>;
  if (!twin.data) return <p class="loading">Loading {id}…</p>;

  const elements = new Map((model.data?.elements ?? []).map((e) => [e.name, e]));
  const values: Record<string, any> = { ...flatten(twin.data), ...live };
  const times = updateTimes(twin.data);
  const names = Object.keys(values).sort();
  const stored = new Set(series.data ?? []);
  const numeric = names.filter((n) => typeof values[n] === 'number' && (stored.has(n) || n in live));
  const unitOf = (n: string) => elements.get(n)?.unit ?? elements.get(n.split('.')[0])?.unit;
  const commands = (model.data?.elements ?? []).filter((e) => e.kind === 'Command');

  return (
    <section class="twin">
      <div class="toolbar">
        <h2>
          <a href={href('fleet')}>Fleet</a> / <span data-testid="twin-id">{id}</span>
        </h2>
        <span class="muted">{model.data?.displayName ?? modelId ?? 'no model'}</span>
        <AlarmBadges counts={counts.data?.by_severity} />
        {device.data && (
          <span class={`status ${device.data.connected ? 'up' : device.data.active ? 'idle' : 'down'}`}>
            device {device.data.id}: {device.data.connected ? 'connected' : device.data.active ? 'active' : 'silent'} · last seen {fmtAgo(device.data.last_seen)}
          </span>
        )}
        <span class="spacer" />
        {s.can('twins:read') && <a href={href('graph', id)}>Graph</a>}
        {s.can('alarms:read') && <a href={`${href('alarms')}?originator=${enc(id)}`}>Alarms</a>}
      </div>

      <div class="cols">
        <table class="props" aria-label="Properties and telemetry">
          <thead>
            <tr>
              <th>Name</th>
              <th>Value</th>
              <th>Kind</th>
              <th>Updated</th>
            </tr>
          </thead>
          <tbody>
            {names.map((n) => {
              const el = elements.get(n);
              const t = liveTimes[n] ?? (times[n] ? Date.parse(times[n]) : null);
              return (
                <tr data-prop={n}>
                  <th scope="row" title={n}>
                    {el?.displayName ?? n}
                  </th>
                  <td class="value" data-testid={`value-${n}`}>
                    {fmtValue(values[n], unitOf(n))}
                  </td>
                  <td class="muted">{el?.kind ?? (n in live ? 'Telemetry' : '')}</td>
                  <td class="muted">{t ? fmtAgo(t) : '—'}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
        {commands.length > 0 && device.data && s.can('commands:send') && <Commands device={device.data.id} commands={commands} />}
      </div>

      {s.can('telemetry:read') && (
        <>
          <h3>Live</h3>
          <div class="grid">
            {numeric.map((n) => (
              <LiveCard key={`${id}/${n}`} twin={id} name={n} label={elements.get(n)?.displayName ?? n} unit={unitOf(n)} feeds={feeds} />
            ))}
          </div>
          {numeric.length > 0 && <History twin={id} names={numeric} unitOf={unitOf} />}
        </>
      )}
    </section>
  );
}

function LiveCard({ twin, name, label, unit, feeds }: { twin: string; name: string; label: string; unit?: string; feeds: Feed }) {
  // The last five minutes from history seed the chart; then the stream.
  const seed = useLoad<[number, number][]>(
    () =>
      get(`/api/v1/twins/${enc(twin)}/telemetry/${enc(name)}?from=${Date.now() - 5 * 60_000}&limit=1000`).then((r) =>
        (r.points ?? []).filter((p: any) => typeof p.value === 'number').map((p: any) => [p.ts, p.value]),
      ),
    [twin, name],
  );
  return (
    <div class="card">
      <div class="card-head">{label}</div>
      {seed.data || seed.error ? (
        <LiveChart
          label={name}
          unit={unit}
          seed={seed.data}
          feed={(p) => {
            if (!feeds.has(name)) feeds.set(name, new Set());
            feeds.get(name)!.add(p);
            return () => feeds.get(name)?.delete(p);
          }}
        />
      ) : (
        <div class="chart placeholder" />
      )}
    </div>
  );
}

function History({ twin, names, unitOf }: { twin: string; names: string[]; unitOf: (n: string) => string | undefined }) {
  const [name, setName] = useState(names.includes('temperature') ? 'temperature' : names[0]);
  const [range, setRange] = useState<[number, number]>(() => [Date.now() - 3600_000, Date.now()]);
  const [preset, setPreset] = useState<string | null>('1h');
  const [stack, setStack] = useState<[number, number][]>([]);
  const pick = (label: string, span: number) => {
    const now = Date.now();
    setPreset(label);
    setStack([]);
    setRange([now - span, now]);
  };
  const local = (ms: number) => {
    const d = new Date(ms - new Date().getTimezoneOffset() * 60_000);
    return d.toISOString().slice(0, 16);
  };
  return (
    <>
      <h3>History</h3>
      <div class="toolbar">
        <select aria-label="Property" value={name} onChange={(e) => setName(e.currentTarget.value)}>
          {names.map((n) => (
            <option value={n}>{n}</option>
          ))}
        </select>
        <div class="seg" role="group" aria-label="Range">
          {RANGES.map(([label, span]) => (
            <button class={preset === label ? 'active' : ''} aria-pressed={preset === label} onClick={() => pick(label, span)}>
              {label}
            </button>
          ))}
        </div>
        <label class="inline">
          from
          <input
            type="datetime-local"
            value={local(range[0])}
            onChange={(e) => {
              const v = Date.parse(e.currentTarget.value);
              if (!Number.isNaN(v) && v < range[1]) (setPreset(null), setRange([v, range[1]]));
            }}
          />
        </label>
        <label class="inline">
          to
          <input
            type="datetime-local"
            value={local(range[1])}
            onChange={(e) => {
              const v = Date.parse(e.currentTarget.value);
              if (!Number.isNaN(v) && v > range[0]) (setPreset(null), setRange([range[0], v]));
            }}
          />
        </label>
        {stack.length > 0 && (
          <button
            class="ghost"
            onClick={() => {
              setRange(stack[stack.length - 1]);
              setStack(stack.slice(0, -1));
            }}
          >
            Zoom out
          </button>
        )}
      </div>
      <HistoryChart
        twin={twin}
        name={name}
        unit={unitOf(name)}
        from={range[0]}
        to={range[1]}
        onZoom={(a, b) => {
          setStack([...stack, range]);
          setPreset(null);
          setRange([a, b]);
        }}
      />
      <p class="muted small">Drag across the chart to zoom in; the server answers at the finer resolution.</p>
    </>
  );
}

function Commands({ device, commands }: { device: string; commands: Element[] }) {
  const [args, setArgs] = useState<Record<string, string>>({});
  const [reply, setReply] = useState<Record<string, string>>({});
  const send = async (c: Element) => {
    setReply((r) => ({ ...r, [c.name]: 'sending…' }));
    let body: unknown = {};
    if (c.request) {
      const raw = args[c.name] ?? '';
      body = c.request.schema === 'string' ? raw : raw === '' ? null : Number.isNaN(Number(raw)) ? raw : Number(raw);
    }
    try {
      const r = await post(`/api/v1/devices/${enc(device)}/commands/${enc(c.name)}?timeout=10s`, body);
      setReply((x) => ({ ...x, [c.name]: JSON.stringify(r) }));
    } catch (e: any) {
      setReply((x) => ({ ...x, [c.name]: `${e.message}` }));
    }
  };
  return (
    <div class="commands">
      <h3>Commands</h3>
      {commands.map((c) => (
        <div class="command">
          {c.request && (
            <input
              aria-label={`${c.name} ${c.request.name}`}
              placeholder={`${c.request.name} (${c.request.schema})`}
              value={args[c.name] ?? ''}
              onInput={(e) => setArgs({ ...args, [c.name]: e.currentTarget.value })}
            />
          )}
          <button onClick={() => void send(c)}>{c.displayName ?? c.name}</button>
          {reply[c.name] && (
            <output class="reply" data-testid={`reply-${c.name}`}>
              {reply[c.name]}
            </output>
          )}
        </div>
      ))}
    </div>
  );
}
