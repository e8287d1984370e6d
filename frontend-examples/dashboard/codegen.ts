// GraphQL Code Generator: types for every operation in src/ from the api's contract,
// ../../schema.graphql. `npm run build` runs it before `tsc --noEmit`, so a page that
// queries a field the schema lacks, or handles a value it no longer has, does not build.
import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  // DASHBOARD_SCHEMA: another schema file (the test suite proves the type check bites).
  schema: process.env.DASHBOARD_SCHEMA ?? "../../schema.graphql",
  documents: ["src/**/*.ts", "!src/gql/**"],
  generates: {
    "src/gql/": {
      preset: "client",
      presetConfig: { fragmentMasking: false },
      config: {
        documentMode: "string", // plain query strings: fetch and graphql-ws send them as they are
        enumsAsTypes: true,
        useTypeImports: true,
        strictScalars: true,
        scalars: { DateTime: "string", JSON: "unknown" },
      },
    },
  },
};

export default config;
