import { useEffect, useRef, useState } from 'preact/hooks';

/** Runs `load` when `deps` change; the latest answer wins. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  const gen = useRef(0);
  useEffect(() => {
    const mine = ++gen.current;
    setError(null);
    load().then(
      (d) => mine === gen.current && setData(d),
      (e) => mine === gen.current && setError(e?.message ?? String(e)),
    );
  }, [...deps, tick]);
  return { data, error, reload: () => setTick((t) => t + 1), setData };
}

export function fmtTime(ms: number | string | null | undefined): string {
  if (ms === null || ms === undefined || ms === '') return '—';
  const d = typeof ms === 'number' ? new Date(ms) : new Date(ms);
  if (Number.isNaN(d.getTime())) return String(ms);
  return d.toLocaleString();
}

export function fmtAgo(ms: number | string | null | undefined): string {
  if (ms === null || ms === undefined) return 'never';
  const t = typeof ms === 'number' ? ms : Date.parse(ms);
  if (Number.isNaN(t)) return '—';
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtValue(v: unknown, unit?: string): string {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'number') {
    // Six decimals at most: what sensors send survives (350.125 stays
    // 350.125), float noise from computed values does not.
    const s = String(Math.round(v * 1e6) / 1e6);
    return unit ? `${s} ${unitLabel(unit)}` : s;
  }
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

const UNITS: Record<string, string> = {
  degreeCelsius: '°C',
  degreeFahrenheit: '°F',
  kelvin: 'K',
  bar: 'bar',
  pascal: 'Pa',
  kilopascal: 'kPa',
  percent: '%',
  litrePerSecond: 'L/s',
  litrePerMinute: 'L/min',
  litrePerHour: 'L/h',
  cubicMetrePerHour: 'm³/h',
  kilowatt: 'kW',
  watt: 'W',
  kilowattHour: 'kWh',
  volt: 'V',
  ampere: 'A',
  hertz: 'Hz',
  revolutionPerMinute: 'rpm',
  cubicMetre: 'm³',
  litre: 'L',
  kilogram: 'kg',
  tonne: 't',
  kilogramPerHour: 'kg/h',
  tonnePerHour: 't/h',
  metrePerSecond: 'm/s',
  second: 's',
  minute: 'min',
  hour: 'h',
};

export function unitLabel(u: string): string {
  return UNITS[u] ?? u;
}

/** Flattens a twin's values to dotted paths (components and objects). */
export function flatten(obj: Record<string, any>, prefix = '', out: Record<string, any> = {}) {
  for (const [k, v] of Object.entries(obj)) {
    if (k.startsWith('$')) continue;
    const path = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, path, out);
    else out[path] = v;
  }
  return out;
}

/** `$metadata` lastUpdateTime per dotted path. */
export function updateTimes(meta: Record<string, any> | undefined, prefix = '', out: Record<string, string> = {}) {
  if (!meta) return out;
  for (const [k, v] of Object.entries(meta)) {
    if (k.startsWith('$') || !v || typeof v !== 'object') continue;
    const path = prefix ? `${prefix}.${k}` : k;
    if (typeof v.lastUpdateTime === 'string') out[path] = v.lastUpdateTime;
    updateTimes(v, path, out);
  }
  return out;
}

export const SEVERITIES = ['critical', 'major', 'minor', 'warning', 'indeterminate'] as const;
