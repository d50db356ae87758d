// Fleet: every twin as a tree (by its relationships) or a sortable table,
// with live status (device connected, last seen) and open alarms by
// severity. Only the rows on screen are rendered, so 10k twins scroll.

import type { ComponentChildren } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { events, get, listAll, queryAll } from '../api';
import { href, useSession, useTick } from '../app';
import { fmtAgo, SEVERITIES } from '../util';

interface Twin {
  $dtId: string;
  $metadata?: { $model?: string; [k: string]: any };
  [k: string]: any;
}
interface Rel {
  $sourceId: string;
  $targetId: string;
  $relationshipName: string;
}
interface Device {
  id: string;
  twin_id: string | null;
  connected: boolean;
  active: boolean;
  last_seen: string | null;
}
type Counts = Record<string, Record<string, number>>;

/** Relationship names read child → parent; the rest parent → child. */
const UPWARD = /^(is|located|part|belongs|in$|inside|memberOf|servedBy|ownedBy)/i;

export interface FleetData {
  twins: Twin[];
  rels: Rel[];
  devices: Map<string, Device>;
  counts: Counts;
}

export async function loadFleet(canDevices: boolean, canAlarms: boolean): Promise<FleetData> {
  const [twins, rawRels, devices, counts] = await Promise.all([
    queryAll<Twin>('SELECT * FROM DIGITALTWINS'),
    queryAll<any>('SELECT R FROM RELATIONSHIPS R'),
    canDevices ? listAll<Device>('/api/v1/devices') : Promise.resolve([] as Device[]),
    canAlarms ? get('/api/v1/alarms/counts').then((c) => c.by_originator_severity ?? {}) : Promise.resolve({}),
  ]);
  const rels: Rel[] = rawRels.map((r) => r.R ?? r);
  const byTwin = new Map<string, Device>();
  for (const d of devices) byTwin.set(d.twin_id ?? d.id, d);
  return { twins, rels, devices: byTwin, counts };
}

export function parents(rels: Rel[]): Map<string, string> {
  const parent = new Map<string, string>();
  for (const r of rels) {
    const [p, c] = UPWARD.test(r.$relationshipName) ? [r.$targetId, r.$sourceId] : [r.$sourceId, r.$targetId];
    if (p !== c && !parent.has(c)) parent.set(c, p);
  }
  return parent;
}

function lastUpdate(t: Twin): number | null {
  let best: number | null = null;
  const walk = (m: any) => {
    if (!m || typeof m !== 'object') return;
    for (const [k, v] of Object.entries(m)) {
      if (k === 'lastUpdateTime' && typeof v === 'string') {
        const ms = Date.parse(v);
        if (!Number.isNaN(ms) && (best === null || ms > best)) best = ms;
      } else if (typeof v === 'object') walk(v);
    }
  };
  walk(t.$metadata);
  for (const v of Object.values(t)) if (v && typeof v === 'object' && v.$metadata) walk(v.$metadata);
  return best;
}

export function AlarmBadges({ counts }: { counts?: Record<string, number> }) {
  if (!counts) return null;
  return (
    <span class="badges">
      {SEVERITIES.filter((s) => counts[s]).map((s) => (
        <span class={`badge sev-${s}`} title={`${counts[s]} open ${s}`}>
          {counts[s]}
        </span>
      ))}
    </span>
  );
}

/** Renders only the rows in view (fixed row height). */
export function VirtualList<T>({ items, row, height = 30, label }: { items: T[]; row: (t: T, i: number) => ComponentChildren; height?: number; label: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [top, setTop] = useState(0);
  const [view, setView] = useState(600);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setView(el.clientHeight));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  const first = Math.max(0, Math.floor(top / height) - 10);
  const last = Math.min(items.length, Math.ceil((top + view) / height) + 10);
  const slice = [];
  for (let i = first; i < last; i++) slice.push(row(items[i], i));
  return (
    <div class="vlist" ref={box} onScroll={(e) => setTop(e.currentTarget.scrollTop)} role="list" aria-label={label} tabIndex={0}>
      <div style={{ height: `${items.length * height}px`, position: 'relative' }}>
        <div style={{ transform: `translateY(${first * height}px)` }}>{slice}</div>
      </div>
    </div>
  );
}

function Status({ d, seen }: { d?: Device; seen: number | null }) {
  if (d?.connected) return <span class="status up" title="connected over MQTT">● connected</span>;
  if (d) return <span class={`status ${d.active ? 'idle' : 'down'}`}>{d.active ? '● active' : '○ silent'}</span>;
  return <span class="status none">{seen ? '·' : ''}</span>;
}

type SortKey = 'id' | 'model' | 'status' | 'seen' | 'alarms';

export function Fleet() {
  const s = useSession();
  useTick(5000);
  const [data, setData] = useState<FleetData | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [mode, setMode] = useState<'tree' | 'table'>('tree');
  const [search, setSearch] = useState('');
  const [open, setOpen] = useState<Set<string>>(new Set());
  const [sort, setSort] = useState<[SortKey, boolean]>(['id', true]);
  const [seen, setSeen] = useState<Map<string, number>>(new Map());
  const reload = useRef<() => void>(() => undefined);

  useEffect(() => {
    let dead = false;
    let timer: number | undefined;
    const load = () =>
      loadFleet(s.can('devices:read'), s.can('alarms:read')).then(
        (d) => !dead && (setData(d), setError(null)),
        (e) => !dead && setError(e.message),
      );
    reload.current = () => {
      clearTimeout(timer);
      timer = window.setTimeout(load, 400);
    };
    void load();
    const off = events.subscribe((e) => {
      if (e.type === 'telemetry' && e.twin) {
        const at = Date.now();
        setSeen((m) => new Map(m).set(e.twin!, at));
      } else if (e.type === 'twin' || e.type === 'relationship' || e.type === 'alarm') reload.current();
    });
    return () => {
      dead = true;
      off();
      clearTimeout(timer);
    };
  }, []);

  const derived = useMemo(() => {
    if (!data) return null;
    const parent = parents(data.rels);
    const ids = new Set(data.twins.map((t) => t.$dtId));
    const children = new Map<string, string[]>();
    for (const t of data.twins) {
      const p = parent.get(t.$dtId);
      if (p && ids.has(p)) {
        if (!children.has(p)) children.set(p, []);
        children.get(p)!.push(t.$dtId);
      }
    }
    for (const c of children.values()) c.sort();
    const roots = data.twins.filter((t) => !parent.has(t.$dtId) || !ids.has(parent.get(t.$dtId)!)).map((t) => t.$dtId).sort();
    const byId = new Map(data.twins.map((t) => [t.$dtId, t]));
    // Open alarms of a subtree roll up to its root, as an operator expects.
    const rolled = new Map<string, Record<string, number>>();
    for (const [orig, c] of Object.entries(data.counts)) {
      let cur: string | undefined = orig;
      const guard = new Set<string>();
      while (cur && !guard.has(cur)) {
        guard.add(cur);
        const r = rolled.get(cur) ?? {};
        for (const [sev, n] of Object.entries(c)) r[sev] = (r[sev] ?? 0) + n;
        rolled.set(cur, r);
        cur = parent.get(cur);
      }
    }
    return { parent, children, roots, byId, rolled };
  }, [data]);

  if (error && !data) return <p class="error" role="alert">{error}</p>;
  if (!data || !derived) return <p class="loading">Loading the fleet…</p>;

  const q = search.trim().toLowerCase();
  const matches = (t: Twin) =>
    !q ||
    t.$dtId.toLowerCase().includes(q) ||
    (t.$metadata?.$model ?? '').toLowerCase().includes(q) ||
    Object.entries(t).some(([k, v]) => !k.startsWith('$') && v !== null && typeof v !== 'object' && String(v).toLowerCase().includes(q));
  const seenOf = (id: string) => {
    const d = data.devices.get(id);
    const cands = [seen.get(id) ?? null, d?.last_seen ? Date.parse(d.last_seen) : null, lastUpdate(derived.byId.get(id)!)];
    return cands.reduce<number | null>((a, b) => (b !== null && (a === null || b > a) ? b : a), null);
  };

  const toggle = (id: string) =>
    setOpen((o) => {
      const n = new Set(o);
      if (n.has(id)) n.delete(id);
      else n.add(id);
      return n;
    });

  const row = (id: string, depth: number, hasKids: boolean, isOpen: boolean) => {
    const t = derived.byId.get(id)!;
    const model = t.$metadata?.$model ?? '';
    const d = data.devices.get(id);
    return (
      <div class="row" role="listitem" style={{ paddingLeft: `${depth * 18 + 6}px` }} data-twin={id}>
        {mode === 'tree' &&
          (hasKids ? (
            <button class="twisty" aria-label={`${isOpen ? 'collapse' : 'expand'} ${id}`} aria-expanded={isOpen} onClick={() => toggle(id)}>
              {isOpen ? '▾' : '▸'}
            </button>
          ) : (
            <span class="twisty" />
          ))}
        <a class="id" href={href('twin', id)}>
          {id}
        </a>
        <span class="model" title={model}>
          {model.replace(/^dtmi:/, '').replace(/;\d+$/, '')}
        </span>
        <Status d={d} seen={seenOf(id)} />
        <span class="seen">{fmtAgo(seenOf(id))}</span>
        <AlarmBadges counts={(mode === 'tree' ? derived.rolled : new Map(Object.entries(data.counts))).get(id)} />
      </div>
    );
  };

  let body;
  if (mode === 'tree') {
    const visible: [string, number, boolean, boolean][] = [];
    let keep: Set<string> | null = null;
    if (q) {
      keep = new Set();
      for (const t of data.twins)
        if (matches(t)) {
          let cur: string | undefined = t.$dtId;
          while (cur && !keep.has(cur)) {
            keep.add(cur);
            cur = derived.parent.get(cur);
          }
        }
    }
    const walk = (id: string, depth: number, guard: Set<string>) => {
      if (guard.has(id) || (keep && !keep.has(id))) return;
      guard.add(id);
      const kids = derived.children.get(id) ?? [];
      const isOpen = keep ? true : open.has(id);
      visible.push([id, depth, kids.length > 0, isOpen]);
      if (isOpen) for (const k of kids) walk(k, depth + 1, guard);
    };
    const guard = new Set<string>();
    for (const r of derived.roots) walk(r, 0, guard);
    body = <VirtualList label="Twin tree" items={visible} row={([id, depth, kids, isOpen]) => row(id, depth, kids, isOpen)} />;
  } else {
    const alarmsOf = (id: string) => SEVERITIES.reduce((n, sv) => n + (data.counts[id]?.[sv] ?? 0), 0);
    const statusOf = (id: string) => {
      const d = data.devices.get(id);
      return d?.connected ? 2 : d?.active ? 1 : 0;
    };
    const key: Record<SortKey, (t: Twin) => string | number> = {
      id: (t) => t.$dtId,
      model: (t) => t.$metadata?.$model ?? '',
      status: (t) => statusOf(t.$dtId),
      seen: (t) => seenOf(t.$dtId) ?? 0,
      alarms: (t) => alarmsOf(t.$dtId),
    };
    const [k, asc] = sort;
    const rows = data.twins.filter(matches).sort((a, b) => {
      const x = key[k](a);
      const y = key[k](b);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    const head = (id: SortKey, label: string) => (
      <button class={`th ${id}`} onClick={() => setSort([id, k === id ? !asc : true])} aria-sort={k === id ? (asc ? 'ascending' : 'descending') : 'none'}>
        {label} {k === id ? (asc ? '▲' : '▼') : ''}
      </button>
    );
    body = (
      <>
        <div class="row head">
          {head('id', 'Twin')}
          {head('model', 'Model')}
          {head('status', 'Status')}
          {head('seen', 'Last seen')}
          {head('alarms', 'Alarms')}
        </div>
        <VirtualList label="Twin table" items={rows} row={(t) => row(t.$dtId, 0, false, false)} />
      </>
    );
  }

  return (
    <section class="fleet">
      <div class="toolbar">
        <h2>Fleet</h2>
        <span class="muted" data-testid="twin-count">
          {data.twins.length.toLocaleString()} twins
        </span>
        <input type="search" placeholder="Search id, model or value" aria-label="Search twins" value={search} onInput={(e) => setSearch(e.currentTarget.value)} />
        <div class="seg" role="group" aria-label="View">
          <button class={mode === 'tree' ? 'active' : ''} aria-pressed={mode === 'tree'} onClick={() => setMode('tree')}>
            Tree
          </button>
          <button class={mode === 'table' ? 'active' : ''} aria-pressed={mode === 'table'} onClick={() => setMode('table')}>
            Table
          </button>
        </div>
        {mode === 'tree' && (
          <button class="ghost" onClick={() => setOpen(open.size ? new Set() : new Set(derived.children.keys()))}>
            {open.size ? 'Collapse all' : 'Expand all'}
          </button>
        )}
      </div>
      {body}
    </section>
  );
}
