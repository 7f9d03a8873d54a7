// The committed types are what openapi-typescript makes of the committed document.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import openapiTS, { astToString } from "openapi-typescript";

test("src/schema.d.ts is generated from ../../openapi.json", async () => {
  const doc = new URL("../../../openapi.json", import.meta.url);
  const fresh = astToString(await openapiTS(doc));
  const committed = await readFile(new URL("../src/schema.d.ts", import.meta.url), "utf8");
  assert.equal(
    committed.replace(/^\/\*\*[\s\S]*?\*\/\n\n/, ""),
    fresh,
    "src/schema.d.ts is stale: run `npm run generate` in clients/typescript and commit it",
  );
});
