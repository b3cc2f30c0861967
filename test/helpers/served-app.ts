import type { AddressInfo } from 'node:net';
import { createTestApp, type TestApp, type TestAppOptions } from './app.js';

/** A test Tally listening on a loopback port, for clients that speak real HTTP (fetch). */
export interface ServedApp extends TestApp {
  /** `http://127.0.0.1:PORT`, no trailing slash. */
  url: string;
}

export async function serveTestApp(options: TestAppOptions = {}): Promise<ServedApp> {
  const test = await createTestApp(options);
  await test.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = test.app.server.address() as AddressInfo;
  return { ...test, url: `http://127.0.0.1:${port}` };
}

/** The description the served Tally publishes, as a client reads it. */
export async function publishedDocument(served: ServedApp): Promise<Record<string, unknown>> {
  const response = await fetch(`${served.url}/openapi.json`);
  if (response.status !== 200) throw new Error(`/openapi.json answered ${response.status}`);
  return (await response.json()) as Record<string, unknown>;
}
