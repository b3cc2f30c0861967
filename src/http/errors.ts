import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { domainErrorOf } from '../db/errors.js';
import { TallyError } from '../errors.js';

/**
 * The one place errors become answers, all in SPEC's shape `{error: {code, message, ...}}`.
 * TallyErrors carry their own status and code (a 503 says when to come back); Fastify's own
 * errors (body too large, bad JSON, wrong media type, a URL too long) are given product codes;
 * anything else is a bug: logged with its stack, answered 500 without internals.
 */
export function renderError(thrown: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  // A database error that did not come through db/database.ts (a read on the pool itself) gets
  // the same domain error as one that did: a timeout is 503 database_busy, not a bug.
  const error = domainErrorOf(thrown) as FastifyError | Error;
  if (error instanceof TallyError) {
    // A 503 is temporary (the database or Stripe): say when to come back, and tell the operator why.
    if (error.status === 503) {
      void reply.header('retry-after', '5');
      request.log.warn({ err: error.cause ?? error, code: error.code }, 'unavailable');
    }
    if (error.status === 429) void reply.header('retry-after', String(error.details.retry_after_seconds ?? 60));
    // Stripe refused a call: the client is told only that; the operator gets Stripe's words.
    if (error.status === 502) request.log.error({ err: error.cause ?? error, code: error.code }, 'Stripe refused a request');
    return reply.code(error.status).send(error.toBody());
  }
  const framework = frameworkError(error as FastifyError, request);
  if (framework !== undefined) return reply.code(framework.status).send(framework.toBody());
  request.log.error({ err: error }, 'request failed');
  return reply.code(500).send({ error: { code: 'internal_error', message: 'internal error; the operator has the details in the log' } });
}

/** Fastify's own refusals, as product errors; undefined for anything that is not a client's fault. */
export function frameworkError(error: FastifyError, request: FastifyRequest): TallyError | undefined {
  const status = error.statusCode;
  if (status === undefined || status < 400 || status >= 500) return undefined;
  // Only Fastify's own errors (and the JSON parser's) are a client's fault here; another
  // library's error that happens to carry a 4xx statusCode is a bug to log, not an answer.
  if (!(typeof error.code === 'string' && error.code.startsWith('FST_')) && !(error instanceof SyntaxError)) return undefined;
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': {
      const limit = request.routeOptions.bodyLimit;
      return new TallyError('payload_too_large', 413, `the body is larger than this call accepts (${limit} bytes)`, { limit_bytes: limit });
    }
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_TYPE':
      return new TallyError('unsupported_media_type', 415, 'send the body as application/json');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new TallyError('uri_too_long', 414, 'a path segment is longer than any id Tally accepts');
    case 'FST_ERR_BAD_URL':
      return new TallyError('invalid_request', 400, 'path: not a valid URL', { field: 'path' });
    default:
      break;
  }
  if (status === 413) return new TallyError('payload_too_large', 413, 'the body is larger than this call accepts');
  if (status === 415) return new TallyError('unsupported_media_type', 415, 'send the body as application/json');
  // What is left is a body that could not be read as JSON (or an empty or cut-off one).
  const message = error instanceof SyntaxError || error.code === 'FST_ERR_CTP_INVALID_JSON_BODY' ? 'not valid JSON' : 'could not be read';
  return new TallyError('invalid_request', 400, `body: ${message}`, { field: 'body' });
}
