// Charts with uPlot (made for large, live time series): a live chart fed
// by the event stream, and a history chart drawn from server-side
// buckets (`?points=<width>`), so the browser never holds more points
// than it can draw; a drag zooms and re-queries at the finer resolution.

import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import { enc, get } from './api';
import { unitLabel } from './util';

function cssVar(name: string, fallback: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

function axes(unit?: string): uPlot.Axis[] {
  const stroke = cssVar('--muted', '#888');
  const grid = { stroke: cssVar('--grid', 'rgba(128,128,128,0.15)'), width: 1 };
  return [
    { stroke, grid, ticks: grid },
    { stroke, grid, ticks: grid, size: 56, label: unit ? unitLabel(unit) : undefined, labelSize: unit ? 14 : 0 },
  ];
}

/** Keeps a uPlot instance sized to its container. */
function useSized(el: { current: HTMLDivElement | null }, plot: { current: uPlot | null }, height: number) {
  useEffect(() => {
    const node = el.current;
    if (!node) return;
    const ro = new ResizeObserver(() => {
      if (plot.current && node.clientWidth > 0) plot.current.setSize({ width: node.clientWidth, height });
    });
    ro.observe(node);
    return () => ro.disconnect();
  }, [height]);
}

export interface LiveSeries {
  push(ts: number, v: number): void;
}

/** A live line chart; `feed` receives a pusher for new points. */
export function LiveChart({
  label,
  unit,
  seed,
  feed,
  windowMs = 5 * 60_000,
  height = 160,
}: {
  label: string;
  unit?: string;
  seed?: [number, number][];
  feed: (p: LiveSeries) => () => void;
  windowMs?: number;
  height?: number;
}) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useSized(el, plot, height);
  useEffect(() => {
    const xs: number[] = [];
    const ys: number[] = [];
    for (const [t, v] of seed ?? []) {
      xs.push(t / 1000);
      ys.push(v);
    }
    const u = new uPlot(
      {
        width: el.current!.clientWidth || 400,
        height,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: {
          // The window follows the clock, so a quiet series still shows
          // "nothing lately" rather than a zoom onto its last point.
          x: { time: true, range: () => [(Date.now() - windowMs) / 1000, Date.now() / 1000] },
        },
        axes: axes(unit),
        series: [{}, { label, stroke: cssVar('--accent', '#1f6feb'), width: 1.5 }],
      },
      [xs, ys],
      el.current!,
    );
    plot.current = u;
    let pending = false;
    const redraw = () => {
      pending = false;
      const cut = (Date.now() - windowMs) / 1000;
      let drop = 0;
      while (drop < xs.length && xs[drop] < cut) drop++;
      if (drop) {
        xs.splice(0, drop);
        ys.splice(0, drop);
      }
      u.setData([xs, ys]);
    };
    const stop = feed({
      push(ts, v) {
        const t = ts / 1000;
        // Points arrive in commit order; an out-of-order one is placed.
        if (xs.length && t < xs[xs.length - 1]) {
          let i = xs.length;
          while (i > 0 && xs[i - 1] > t) i--;
          xs.splice(i, 0, t);
          ys.splice(i, 0, v);
        } else {
          xs.push(t);
          ys.push(v);
        }
        if (!pending) {
          pending = true;
          requestAnimationFrame(redraw);
        }
      },
    });
    return () => {
      stop();
      u.destroy();
      plot.current = null;
    };
  }, [label]);
  return <div class="chart" ref={el} data-testid={`live-${label}`} />;
}

export const RANGES: [string, number][] = [
  ['15m', 15 * 60_000],
  ['1h', 3600_000],
  ['6h', 6 * 3600_000],
  ['24h', 86400_000],
  ['7d', 7 * 86400_000],
  ['30d', 30 * 86400_000],
];

interface Bucket {
  ts: number;
  avg?: number;
  min?: number;
  max?: number;
  count?: number;
}

/** History from server-side buckets: avg line, min–max band. */
export function HistoryChart({
  twin,
  name,
  unit,
  from,
  to,
  onZoom,
  height = 220,
  marker,
}: {
  twin: string;
  name: string;
  unit?: string;
  from: number;
  to: number;
  onZoom?: (from: number, to: number) => void;
  height?: number;
  marker?: number;
}) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const [info, setInfo] = useState<string>('loading…');
  useSized(el, plot, height);
  useEffect(() => {
    let dead = false;
    const width = Math.max(100, Math.min(4000, el.current?.clientWidth ?? 800));
    const started = performance.now();
    get<{ bucket: string; buckets: Bucket[] }>(
      `/api/v1/twins/${enc(twin)}/telemetry/${enc(name)}?from=${Math.floor(from)}&to=${Math.ceil(to)}&points=${width}`,
    ).then(
      (r) => {
        if (dead || !el.current) return;
        const xs = r.buckets.map((b) => b.ts / 1000);
        const avg = r.buckets.map((b) => b.avg ?? null);
        const max = r.buckets.map((b) => b.max ?? null);
        const min = r.buckets.map((b) => b.min ?? null);
        const points = r.buckets.reduce((n, b) => n + (b.count ?? 0), 0);
        const accent = cssVar('--accent', '#1f6feb');
        plot.current?.destroy();
        const opts: uPlot.Options = {
          width: el.current.clientWidth || width,
          height,
          legend: { show: false },
          scales: { x: { time: true, min: from / 1000, max: to / 1000 } },
          axes: axes(unit),
          series: [
            {},
            { label: 'avg', stroke: accent, width: 1.5 },
            { label: 'max', stroke: 'transparent', points: { show: false } },
            { label: 'min', stroke: 'transparent', points: { show: false } },
          ],
          bands: [{ series: [2, 3], fill: cssVar('--band', 'rgba(31,111,235,0.18)') }],
          hooks: {
            setSelect: [
              (u) => {
                if (!onZoom || u.select.width < 5) return;
                const a = u.posToVal(u.select.left, 'x') * 1000;
                const b = u.posToVal(u.select.left + u.select.width, 'x') * 1000;
                u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
                onZoom(a, b);
              },
            ],
            draw: marker
              ? [
                  (u) => {
                    const x = u.valToPos(marker / 1000, 'x', true);
                    const ctx = u.ctx;
                    ctx.save();
                    ctx.strokeStyle = cssVar('--critical', '#d1242f');
                    ctx.setLineDash([4, 4]);
                    ctx.beginPath();
                    ctx.moveTo(x, u.bbox.top);
                    ctx.lineTo(x, u.bbox.top + u.bbox.height);
                    ctx.stroke();
                    ctx.restore();
                  },
                ]
              : [],
          },
        };
        plot.current = new uPlot(opts, [xs, avg, max, min] as uPlot.AlignedData, el.current);
        const ms = Math.round(performance.now() - started);
        const n = (k: number, what: string) => `${k.toLocaleString()} ${what}${k === 1 ? '' : 's'}`;
        setInfo(`${n(points, 'point')} in ${n(r.buckets.length, 'bucket')} of ${r.bucket} · ${ms} ms`);
      },
      (e) => !dead && setInfo(e.message),
    );
    return () => {
      dead = true;
    };
  }, [twin, name, from, to]);
  useEffect(
    () => () => {
      plot.current?.destroy();
      plot.current = null;
    },
    [],
  );
  return (
    <figure class="history">
      <div class="chart" ref={el} data-testid={`history-${name}`} />
      <figcaption data-testid="history-info">{info}</figcaption>
    </figure>
  );
}
