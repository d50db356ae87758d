import { useState } from 'preact/hooks';
import { login, useApiKey } from '../api';

export function Login() {
  const [mode, setMode] = useState<'password' | 'key'>('password');
  const [user, setUser] = useState('');
  const [pass, setPass] = useState('');
  const [key, setKey] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === 'password') await login(user.trim(), pass);
      else await useApiKey(key.trim());
    } catch (err: any) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="login">
      <form onSubmit={submit} aria-label="Log in">
        <h1>twinhub</h1>
        <div class="tabs" role="tablist">
          <button type="button" role="tab" aria-selected={mode === 'password'} class={mode === 'password' ? 'active' : ''} onClick={() => setMode('password')}>
            User
          </button>
          <button type="button" role="tab" aria-selected={mode === 'key'} class={mode === 'key' ? 'active' : ''} onClick={() => setMode('key')}>
            API key
          </button>
        </div>
        {mode === 'password' ? (
          <>
            <label>
              User name
              <input name="username" autocomplete="username" value={user} onInput={(e) => setUser(e.currentTarget.value)} required autofocus />
            </label>
            <label>
              Password
              <input name="password" type="password" autocomplete="current-password" value={pass} onInput={(e) => setPass(e.currentTarget.value)} required />
            </label>
          </>
        ) : (
          <label>
            API key
            <input name="apikey" autocomplete="off" placeholder="thk_…" value={key} onInput={(e) => setKey(e.currentTarget.value)} required />
          </label>
        )}
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </div>
  );
}
