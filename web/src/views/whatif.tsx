// What-if for a deployed model: a slider per feature over the manifest's
// range, the prediction with its interval as a band, the inference time,
// and a scenario sweep of one feature drawn as a chart (seed 000's
// dashboard, for any model). A bound model can start from a twin's values.

import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import { enc, get, post } from '../api';
import { href, useSession } from '../app';
import { fmtValue, useLoad } from '../util';

interface Feature {
  name: string;
  unit?: string;
  min?: number;
  max?: number;
}
interface Prediction {
  prediction: number | string;
  interval?: { lower: number; upper: number; level: number } | null;
  model_version: string;
  inference_time_ms: number;
  warnings?: string[];
}

export function WhatIf({ model, twin }: { model?: string; twin?: string }) {
  const models = useLoad(() => get<{ value: { name: string; active: string }[] }>('/api/v1/ml/models'), []);
  const name = model ?? models.data?.value[0]?.name;
  if (models.error) return <p class="error" role="alert">{models.error}</p>;
  if (!models.data) return <p class="loading">Loading models…</p>;
  if (!name) return <p class="muted">No ML model is deployed. Upload one under Admin → ML models.</p>;
  return (
    <section class="whatif">
      <div class="toolbar">
        <h2>What-if</h2>
        <select aria-label="Model" value={name} onChange={(e) => (location.hash = href('whatif', e.currentTarget.value))}>
          {models.data.value.map((m) => (
            <option value={m.name}>
              {m.name} ({m.active})
            </option>
          ))}
        </select>
      </div>
      <Panel key={name} name={name} twin={twin} />
    </section>
  );
}

function Panel({ name, twin }: { name: string; twin?: string }) {
  const s = useSession();
  const info = useLoad(() => get(`/api/v1/ml/models/${enc(name)}`), [name]);
  const bindings = useLoad(
    () => (s.can('ml:read') ? get<{ value: any[] }>('/api/v1/ml/bindings').then((r) => r.value.filter((b) => b.model === name)) : Promise.resolve([])),
    [name],
  );
  const features: Feature[] = info.data?.manifest?.features ?? [];
  const output = info.data?.manifest?.output;
  const [values, setValues] = useState<Record<string, number>>({});
  const [pred, setPred] = useState<Prediction | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [sweep, setSweep] = useState<string | null>(null);
  const [twinId, setTwinId] = useState(twin ?? '');
  const seq = useRef(0);

  useEffect(() => {
    if (!features.length) return;
    const mid: Record<string, number> = {};
    for (const f of features) mid[f.name] = round(((f.min ?? 0) + (f.max ?? 1)) / 2);
    setValues(mid);
    setSweep(features[0].name);
  }, [info.data]);

  useEffect(() => {
    if (!features.length || Object.keys(values).length < features.length || !s.can('ml:predict')) return;
    const mine = ++seq.current;
    const t = setTimeout(() => {
      post<Prediction>(`/api/v1/ml/models/${enc(name)}/predict`, values).then(
        (p) => mine === seq.current && (setPred(p), setError(null)),
        (e) => mine === seq.current && setError(e.message),
      );
    }, 60);
    return () => clearTimeout(t);
  }, [values]);

  const fromTwin = async () => {
    try {
      const t = await get(`/api/v1/twins/${enc(twinId.trim())}`);
      const b = bindings.data?.[0];
      const next = { ...values };
      for (const f of features) {
        const prop = b?.inputs?.[f.name] ?? f.name;
        const v = prop.split('.').reduce((o: any, k: string) => o?.[k], t);
        if (typeof v === 'number') next[f.name] = round(v);
      }
      setValues(next);
      setError(null);
    } catch (e: any) {
      setError(e.message);
    }
  };

  if (info.error) return <p class="error" role="alert">{info.error}</p>;
  if (!info.data) return <p class="loading">Loading…</p>;
  if (!s.can('ml:predict')) return <p class="muted">Your role may read models but not run predictions.</p>;

  return (
    <div class="cols">
      <div class="sliders">
        {features.map((f) => {
          const lo = f.min ?? 0;
          const hi = f.max ?? 1;
          const step = (hi - lo) / 200;
          return (
            <label class="slider">
              <span>
                {f.name} <b data-testid={`feature-${f.name}`}>{fmtValue(values[f.name], f.unit)}</b>
              </span>
              <input
                type="range"
                name={f.name}
                aria-label={f.name}
                min={lo}
                max={hi}
                step={step}
                value={values[f.name] ?? lo}
                onInput={(e) => setValues({ ...values, [f.name]: round(Number(e.currentTarget.value)) })}
              />
              <span class="range muted">
                {lo} – {hi} {f.unit ?? ''}
              </span>
            </label>
          );
        })}
        {(bindings.data?.length ?? 0) > 0 && (
          <div class="inline-form">
            <input aria-label="Twin id" placeholder="twin id, e.g. reactor-1" value={twinId} onInput={(e) => setTwinId(e.currentTarget.value)} />
            <button onClick={() => void fromTwin()} disabled={!twinId.trim()}>
              Use this twin's current values
            </button>
          </div>
        )}
      </div>
      <div class="prediction">
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        {pred && (
          <>
            <div class="big" data-testid="prediction">
              {fmtValue(pred.prediction, output?.unit)}
            </div>
            <div class="muted">
              {output?.name ?? 'prediction'} · version {pred.model_version} · <span data-testid="inference-ms">{pred.inference_time_ms.toFixed(3)} ms</span>
            </div>
            {pred.interval && typeof pred.prediction === 'number' && <Band p={pred.prediction} i={pred.interval} features={features} />}
            {pred.warnings?.map((w) => <p class="warn">{w}</p>)}
          </>
        )}
        {sweep && (
          <>
            <div class="toolbar">
              <span>Sweep</span>
              <select aria-label="Sweep feature" value={sweep} onChange={(e) => setSweep(e.currentTarget.value)}>
                {features.map((f) => (
                  <option value={f.name}>{f.name}</option>
                ))}
              </select>
            </div>
            <Sweep name={name} feature={features.find((f) => f.name === sweep)!} base={values} />
          </>
        )}
      </div>
    </div>
  );
}

function round(v: number): number {
  return Math.round(v * 1000) / 1000;
}

/** The interval as a band on a small axis around it. */
function Band({ p, i }: { p: number; i: { lower: number; upper: number; level: number }; features: Feature[] }) {
  const span = Math.max(1e-9, i.upper - i.lower);
  const lo = i.lower - span * 0.5;
  const hi = i.upper + span * 0.5;
  const x = (v: number) => ((v - lo) / (hi - lo)) * 100;
  return (
    <figure class="band" aria-label={`interval ${i.lower.toFixed(2)} to ${i.upper.toFixed(2)}`}>
      <svg viewBox="0 0 100 16" preserveAspectRatio="none" role="img">
        <rect x={x(i.lower)} y="3" width={x(i.upper) - x(i.lower)} height="10" class="band-fill" />
        <line x1={x(p)} x2={x(p)} y1="0" y2="16" class="band-mark" />
      </svg>
      <figcaption class="muted" data-testid="interval">
        {Math.round(i.level * 100)} % interval {i.lower.toFixed(2)} – {i.upper.toFixed(2)}
      </figcaption>
    </figure>
  );
}

function Sweep({ name, feature, base }: { name: string; feature: Feature; base: Record<string, number> }) {
  const el = useRef<HTMLDivElement>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let dead = false;
    let plot: uPlot | null = null;
    const t = setTimeout(() => {
      const lo = feature.min ?? 0;
      const hi = feature.max ?? 1;
      const rest = { ...base };
      delete rest[feature.name];
      post<{ columns: string[]; rows: any[][] }>(`/api/v1/ml/models/${enc(name)}/scenarios`, {
        base: rest,
        grid: { [feature.name]: { from: lo, to: hi, steps: 25 } },
      }).then(
        (r) => {
          if (dead || !el.current) return;
          const cols = r.columns;
          const xi = cols.indexOf(feature.name);
          const pi = cols.indexOf('prediction');
          const li = cols.indexOf('lower');
          const ui = cols.indexOf('upper');
          const data = [r.rows.map((x) => x[xi]), r.rows.map((x) => x[pi]), r.rows.map((x) => x[ui]), r.rows.map((x) => x[li])];
          const accent = getComputedStyle(document.documentElement).getPropertyValue('--accent').trim() || '#1f6feb';
          el.current.innerHTML = '';
          plot = new uPlot(
            {
              width: el.current.clientWidth || 400,
              height: 200,
              legend: { show: false },
              scales: { x: { time: false } },
              axes: [{ label: feature.name, labelSize: 14 }, { size: 56 }],
              series: [{}, { stroke: accent, width: 1.5 }, { stroke: 'transparent' }, { stroke: 'transparent' }],
              bands: [{ series: [2, 3], fill: 'rgba(31,111,235,0.18)' }],
            },
            data as uPlot.AlignedData,
            el.current,
          );
          setError(null);
        },
        (e) => !dead && setError(e.message),
      );
    }, 250);
    return () => {
      dead = true;
      clearTimeout(t);
      plot?.destroy();
    };
  }, [name, feature.name, JSON.stringify(base)]);
  return (
    <>
      <div class="chart" ref={el} data-testid="sweep" />
      {error && <p class="error">{error}</p>}
    </>
  );
}
