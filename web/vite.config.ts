import { defineConfig } from 'vite';

// The dashboard is served by the twinhub binary from `web/dist` (embedded
// at build time). Hashed file names under assets/ let the server cache
// them for a year; index.html is revalidated on every load.
export default defineConfig({
  base: '/',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 600,
    modulePreload: { polyfill: false },
  },
  server: {
    // `npm run dev` against a running `twinhub serve` (TWINHUB_URL).
    proxy: { '/api': process.env.TWINHUB_URL ?? 'http://127.0.0.1:8080' },
  },
});
