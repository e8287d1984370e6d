import { defineConfig } from "vite";

// `npm run dev` serves the console on http://localhost:5173/dashboard/ and forwards the api's
// paths to `make dev`'s api (TASKRUNNER_API to point elsewhere), so the page and the api
// share an origin, as they do when the api serves dist/ at /dashboard/.
const api = process.env.TASKRUNNER_API ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "/dashboard/",
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  server: {
    proxy: {
      "/graphql": { target: api, ws: true },
      "/artifacts": { target: api },
      "/tasks": { target: api }, // a task's whole log (Task.logsUrl)
      "/dashboard/config.json": { target: api }, // the dev key under `taskrunner dev`
    },
  },
});
