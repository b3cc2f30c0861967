import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';

/**
 * Checks real answers against the OpenAPI description Tally publishes: the answer's status must
 * be described for its operation, its media type too, and a JSON body must validate against
 * the described schema (JSON Schema 2020-12, as OpenAPI 3.1 uses). Every answer checked is
 * recorded, so a test can also say which operations and refusals it has seen.
 */
export interface Observation {
  method: string;
  /** The operation's path as described (`/v1/accounts/{id}`). */
  path: string;
  status: number;
  /** The error code of a refusal. */
  code?: string;
}

const addFormats = addFormatsModule as unknown as (ajv: Ajv2020) => Ajv2020;
const documentId = 'https://tally.test/openapi.json';
const pointer = (...segments: string[]): string =>
  segments.map((segment) => encodeURIComponent(segment.replace(/~/g, '~0').replace(/\//g, '~1'))).join('/');

export class ConformanceChecker {
  readonly observations: Observation[] = [];
  readonly failures: string[] = [];
  private readonly ajv: Ajv2020;
  private readonly operations: { method: string; path: string; pattern: RegExp; literalLength: number }[] = [];

  constructor(private readonly document: { paths: Record<string, Record<string, unknown>> }) {
    this.ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true });
    addFormats(this.ajv);
    // The description's own fields are not schema keywords; its schemas are checked in strict mode.
    this.ajv.addVocabulary(['openapi', 'info', 'paths', 'components', 'tags', 'servers', 'security']);
    this.ajv.addSchema({ ...document, $id: documentId });
    for (const [path, item] of Object.entries(document.paths)) {
      const source = path.replace(/[.+?^$()|[\]\\]/g, '\\$&').replace(/\{[a-z_]+\}/g, '[^/]+');
      for (const method of Object.keys(item)) {
        this.operations.push({
          method: method.toUpperCase(),
          path,
          pattern: new RegExp(`^${source}$`),
          literalLength: path.replace(/\{[a-z_]+\}/g, '').length,
        });
      }
    }
  }

  /** The described operation a request reaches (the most literal path wins, as in the router). */
  operationOf(method: string, url: string): { method: string; path: string } | undefined {
    const pathname = new URL(url).pathname;
    return this.operations
      .filter((operation) => operation.method === method && operation.pattern.test(pathname))
      .sort((a, b) => b.literalLength - a.literalLength)[0];
  }

  /** Checks one answer; a mismatch is recorded in `failures` (never thrown, so a client's retry logic never sees it). */
  async check(method: string, url: string, response: Response): Promise<void> {
    const operation = this.operationOf(method, url);
    const where = `${method} ${new URL(url).pathname} answered ${response.status}`;
    if (operation === undefined) {
      this.failures.push(`${where}: no described operation`);
      return;
    }
    const described = (
      this.document.paths[operation.path]?.[operation.method.toLowerCase()] as
        | {
            responses: Record<string, { content?: Record<string, unknown> }>;
          }
        | undefined
    )?.responses[String(response.status)];
    if (described === undefined) {
      this.failures.push(`${where}: status not described for ${operation.method} ${operation.path}`);
      return;
    }
    const mediaType = (response.headers.get('content-type') ?? '').split(';')[0]?.trim() ?? '';
    const text = await response.clone().text();
    const observation: Observation = { method: operation.method, path: operation.path, status: response.status };
    if (mediaType === 'application/json') {
      if (described.content?.['application/json'] === undefined) {
        this.failures.push(`${where}: a JSON body, but the description has none`);
        return;
      }
      const body: unknown = JSON.parse(text);
      const validate = this.ajv.getSchema(
        `${documentId}#/${pointer('paths', operation.path, operation.method.toLowerCase(), 'responses', String(response.status), 'content', 'application/json', 'schema')}`,
      );
      if (validate === undefined) throw new Error(`no schema for ${where}`);
      if (!validate(body)) this.failures.push(`${where}: ${this.ajv.errorsText(validate.errors)} in ${text.slice(0, 500)}`);
      const code = (body as { error?: { code?: unknown } }).error?.code;
      if (typeof code === 'string') observation.code = code;
    } else if (!Object.keys(described.content ?? {}).some((type) => type === mediaType)) {
      this.failures.push(`${where}: media type ${mediaType || '(none)'} not described`);
    }
    this.observations.push(observation);
  }

  /** A fetch that checks every answer it gets against the description. */
  fetch = async (input: Request | string | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(input, init);
    const response = await fetch(request);
    await this.check(request.method, request.url, response);
    return response;
  };

  /** Whether an answer with this status (and code) was seen for the operation. */
  seen(method: string, path: string, status: number, code?: string): boolean {
    return this.observations.some(
      (seen) => seen.method === method && seen.path === path && seen.status === status && (code === undefined || seen.code === code),
    );
  }
}
