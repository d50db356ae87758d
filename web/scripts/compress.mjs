// Writes a .gz beside every built file worth compressing, so the server
// sends gzip without compressing at run time (see build.rs).
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync, constants } from 'node:zlib';

function walk(dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (/\.(js|css|html|svg|json)$/.test(name)) {
      const body = readFileSync(p);
      if (body.length < 512) continue;
      const gz = gzipSync(body, { level: constants.Z_BEST_COMPRESSION });
      writeFileSync(p + '.gz', gz);
    }
  }
}
walk(new URL('../dist', import.meta.url).pathname);
