// Alarms: filterable list with severity colours, live updates from the
// event stream, acknowledge / clear / comment where the caller may, and
// the alarm's chart context (its property around the alarm's start).

import { useEffect, useState } from 'preact/hooks';
import { enc, events, get, post } from '../api';
import { hashParams, href, useSession } from '../app';
import { HistoryChart } from '../chart';
import { fmtAgo, fmtTime, fmtValue, SEVERITIES } from '../util';

export interface Alarm {
  id: string;
  type: string;
  severity: string;
  originator: string;
  status: string;
  rule: string | null;
  start_ts: number;
  end_ts: number | null;
  ack_ts: number | null;
  clear_ts: number | null;
  ack_by: string | null;
  clear_by: string | null;
  count: number;
  last_value: any;
  comments: { at: number; author: string; text: string }[];
}

const STATUSES: [string, string][] = [
  ['active', 'Active'],
  ['unack', 'Unacknowledged'],
  ['cleared', 'Cleared'],
  ['', 'All'],
];

export function Alarms() {
  const s = useSession();
  const init = hashParams();
  const [status, setStatus] = useState(init.get('status') ?? 'active');
  const [severity, setSeverity] = useState<Set<string>>(new Set());
  const [originator, setOriginator] = useState(init.get('originator') ?? '');
  const [subtree, setSubtree] = useState(true);
  const [list, setList] = useState<Alarm[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  const [tick, setTick] = useState(0);

  useEffect(() => {
    let dead = false;
    const q = new URLSearchParams();
    if (status) q.set('status', status);
    if (severity.size) q.set('severity', [...severity].join(','));
    if (originator.trim()) {
      q.set('originator', originator.trim());
      if (subtree) q.set('subtree', 'true');
    }
    q.set('limit', '500');
    get<{ value: Alarm[] }>(`/api/v1/alarms?${q}`).then(
      (r) => !dead && (setList(r.value), setError(null)),
      (e) => !dead && setError(e.message),
    );
    return () => {
      dead = true;
    };
  }, [status, severity, originator, subtree, tick]);

  useEffect(() => {
    let timer: number | undefined;
    const off = events.subscribe((e) => {
      if (e.type !== 'alarm') return;
      clearTimeout(timer);
      timer = window.setTimeout(() => setTick((t) => t + 1), 150);
    });
    return () => {
      off();
      clearTimeout(timer);
    };
  }, []);

  const act = async (a: Alarm, what: 'ack' | 'clear') => {
    try {
      await post(`/api/v1/alarms/${enc(a.id)}/${what}`);
      setTick((t) => t + 1);
    } catch (e: any) {
      setError(e.message);
    }
  };

  return (
    <section class="alarms">
      <div class="toolbar">
        <h2>Alarms</h2>
        <div class="seg" role="group" aria-label="Status">
          {STATUSES.map(([v, label]) => (
            <button class={status === v ? 'active' : ''} aria-pressed={status === v} onClick={() => setStatus(v)}>
              {label}
            </button>
          ))}
        </div>
        <div class="seg" role="group" aria-label="Severity">
          {SEVERITIES.map((sv) => (
            <button
              class={`sev-toggle sev-${sv} ${severity.has(sv) ? 'active' : ''}`}
              aria-pressed={severity.has(sv)}
              onClick={() => {
                const n = new Set(severity);
                if (n.has(sv)) n.delete(sv);
                else n.add(sv);
                setSeverity(n);
              }}
            >
              {sv}
            </button>
          ))}
        </div>
        <input type="search" placeholder="Twin (and below)" aria-label="Originator" value={originator} onChange={(e) => setOriginator(e.currentTarget.value)} />
        <label class="inline">
          <input type="checkbox" checked={subtree} onChange={(e) => setSubtree(e.currentTarget.checked)} /> subtree
        </label>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {!list ? (
        <p class="loading">Loading…</p>
      ) : list.length === 0 ? (
        <p class="muted" data-testid="no-alarms">
          No alarms match.
        </p>
      ) : (
        <table class="alarm-list" aria-label="Alarms">
          <thead>
            <tr>
              <th>Severity</th>
              <th>Type</th>
              <th>Twin</th>
              <th>Status</th>
              <th>Started</th>
              <th>Value</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.map((a) => (
              <>
                <tr class={`alarm sev-row-${a.severity}`} data-alarm={a.id} data-status={a.status}>
                  <td>
                    <span class={`badge sev-${a.severity}`}>{a.severity}</span>
                  </td>
                  <td>
                    <button class="link" aria-expanded={open === a.id} onClick={() => setOpen(open === a.id ? null : a.id)}>
                      {a.type}
                    </button>
                  </td>
                  <td>
                    <a href={href('twin', a.originator)}>{a.originator}</a>
                  </td>
                  <td class="status-text">{a.status.replace('_', ' ').toLowerCase()}</td>
                  <td title={fmtTime(a.start_ts)}>{fmtAgo(a.start_ts)}</td>
                  <td class="muted">{fmtValue(a.last_value)}</td>
                  <td class="actions">
                    {s.can('alarms:ack') && a.status.endsWith('_UNACK') && (
                      <button onClick={() => void act(a, 'ack')} aria-label={`Acknowledge ${a.type} on ${a.originator}`}>
                        Acknowledge
                      </button>
                    )}
                    {s.can('alarms:ack') && a.status.startsWith('ACTIVE') && (
                      <button class="ghost" onClick={() => void act(a, 'clear')} aria-label={`Clear ${a.type} on ${a.originator}`}>
                        Clear
                      </button>
                    )}
                  </td>
                </tr>
                {open === a.id && (
                  <tr class="detail">
                    <td colSpan={7}>
                      <AlarmDetail a={a} onChange={() => setTick((t) => t + 1)} />
                    </td>
                  </tr>
                )}
              </>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function AlarmDetail({ a, onChange }: { a: Alarm; onChange: () => void }) {
  const s = useSession();
  const [text, setText] = useState('');
  const [error, setError] = useState<string | null>(null);
  const prop =
    a.last_value && typeof a.last_value === 'object'
      ? Object.entries(a.last_value).find(([, v]) => typeof v === 'number')?.[0]
      : undefined;
  const end = a.end_ts ?? Date.now();
  const pad = Math.max(5 * 60_000, (end - a.start_ts) * 0.5);
  const comment = async (e: Event) => {
    e.preventDefault();
    if (!text.trim()) return;
    try {
      await post(`/api/v1/alarms/${enc(a.id)}/comments`, { text: text.trim() });
      setText('');
      onChange();
    } catch (err: any) {
      setError(err.message);
    }
  };
  return (
    <div class="alarm-detail">
      <dl>
        <dt>Rule</dt>
        <dd>{a.rule ?? '—'}</dd>
        <dt>Started</dt>
        <dd>{fmtTime(a.start_ts)}</dd>
        <dt>Acknowledged</dt>
        <dd>{a.ack_ts ? `${fmtTime(a.ack_ts)} by ${a.ack_by}` : '—'}</dd>
        <dt>Cleared</dt>
        <dd>{a.clear_ts ? `${fmtTime(a.clear_ts)} by ${a.clear_by ?? 'rule'}` : '—'}</dd>
        <dt>Events</dt>
        <dd>{a.count}</dd>
      </dl>
      {prop && s.can('telemetry:read') && (
        <HistoryChart twin={a.originator} name={prop} from={a.start_ts - pad} to={Math.min(Date.now(), end + pad)} marker={a.start_ts} height={180} />
      )}
      <ul class="comments">
        {a.comments.map((c) => (
          <li>
            <b>{c.author}</b> <span class="muted">{fmtTime(c.at)}</span>: {c.text}
          </li>
        ))}
      </ul>
      {s.can('alarms:ack') && (
        <form onSubmit={comment} class="inline-form">
          <input aria-label="Comment" placeholder="Add a comment" value={text} onInput={(e) => setText(e.currentTarget.value)} />
          <button type="submit">Comment</button>
        </form>
      )}
      {error && <p class="error">{error}</p>}
    </div>
  );
}
