// Serves the built worker-app with miniflare: its bundled workerd plus local, disk-persisted
// R2 (bucket COLD), Cache API and SQLite-backed Durable Objects. e2e.sh runs it for the tier
// phases (plain workerd has no R2 or cache).
//
// Environment: MF_NODE (the npm prefix holding miniflare), MF_BUILD (the directory with
// index.js and index_bg.wasm), MF_DIR (where state persists), MF_PORT (on 127.0.0.1).
// Prints "ready <url>" once serving; SIGTERM/SIGINT dispose of it (stopping workerd).
import { createRequire } from "node:module";
import path from "node:path";

const need = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`miniflare.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const node = need("MF_NODE");
const build = need("MF_BUILD");
const dir = need("MF_DIR");
const port = Number(need("MF_PORT"));

const require = createRequire(path.join(node, "package.json"));
const { Miniflare } = require("miniflare");

const sqlite = (className) => ({ className, useSQLite: true });
const mf = new Miniflare({
  modules: true,
  scriptPath: path.join(build, "index.js"),
  modulesRoot: build,
  modulesRules: [
    { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
    { type: "CompiledWasm", include: ["**/*.wasm"] },
  ],
  compatibilityDate: "2025-09-01",
  // Without it miniflare fetches request metadata from the internet at start.
  cf: false,
  host: "127.0.0.1",
  port,
  durableObjects: {
    TENANTS: sqlite("TenantStore"),
    SHARDS: sqlite("ShardObject"),
    COORDINATOR: sqlite("Coordinator"),
    TIERS: sqlite("TierObject"),
  },
  r2Buckets: ["COLD"],
  cache: true,
  bindings: { DB4_TEST_ROUTES: "1" },
  durableObjectsPersist: path.join(dir, "do"),
  r2Persist: path.join(dir, "r2"),
  cachePersist: path.join(dir, "cache"),
});

const url = await mf.ready;
console.log(`ready ${url}`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await mf.dispose();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
