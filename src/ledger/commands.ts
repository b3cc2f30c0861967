import { z } from 'zod';
import { meterIdSchema, quantitiesSchema } from '../pricing/meters.js';

/**
 * The validated inputs of the ledger's operations. Objects are strict (an unknown field is an
 * error), amounts are positive safe integers, and every limit is named here.
 */
export const holdLifetimeSecondsDefault = 900;
export const holdLifetimeSecondsMax = 86_400;
export const batchEventCountMax = 1000;
export const ledgerPageSizeMax = 500;
export const ledgerPageSizeDefault = 50;
export const metadataKeyCountMax = 50;
export const reasonLengthMax = 500;

/**
 * SPEC's account id: 1 to 128 characters of `A-Za-z0-9_.:@-`. `.` and `..` are refused too:
 * they fit those characters, but in a URL they are dot segments that clients and proxies
 * resolve into another path (`/v1/accounts/../balance`).
 */
export const accountIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9_.:@-]{1,128}$/, '1 to 128 characters of A-Za-z0-9_.:@-')
  .refine((id) => id !== '.' && id !== '..', 'not . or .. (a path segment that URLs resolve away)');
export const amountCreditsSchema = z.int().positive().max(Number.MAX_SAFE_INTEGER);
export const idempotencyKeySchema = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces');

const metadataSchema = z
  .record(z.string().min(1).max(64), z.union([z.string().max(500), z.number(), z.boolean(), z.null()]))
  .refine((value) => Object.keys(value).length <= metadataKeyCountMax, `at most ${metadataKeyCountMax} keys`);

export const accountInputSchema = z.strictObject({
  email: z.email().max(320).nullable().optional(),
  name: z.string().min(1).max(200).nullable().optional(),
  metadata: metadataSchema.optional(),
  /** The device fingerprint the app reports; kept only as a keyed hash, for trial claims. */
  device_fingerprint: z.string().min(1).max(512).optional(),
});
export type AccountInput = z.infer<typeof accountInputSchema>;

/**
 * A spend names its credits (`amount`) or what it used (`meter` with `quantities`, priced in the
 * database by the account's rate card), never both. Both or neither is refused naming the field.
 */
const spendFields = {
  amount: amountCreditsSchema.optional(),
  meter: meterIdSchema.optional(),
  quantities: quantitiesSchema.optional(),
};

function checkSpendFields(
  input: { amount?: number | undefined; meter?: string | undefined; quantities?: unknown },
  context: z.core.$RefinementCtx,
): void {
  if (input.amount !== undefined && (input.meter !== undefined || input.quantities !== undefined)) {
    const field = input.meter === undefined ? 'quantities' : 'meter';
    context.addIssue({ code: 'custom', path: [field], message: 'give either amount (credits) or meter with quantities, not both' });
  } else if (input.amount === undefined && input.meter === undefined && input.quantities === undefined) {
    context.addIssue({ code: 'custom', path: ['amount'], message: 'required: give amount (credits) or meter with quantities' });
  } else if (input.meter !== undefined && input.quantities === undefined) {
    context.addIssue({ code: 'custom', path: ['quantities'], message: 'required with meter' });
  } else if (input.meter === undefined && input.quantities !== undefined) {
    context.addIssue({ code: 'custom', path: ['meter'], message: 'required with quantities' });
  }
}

const usageShape = z.strictObject({
  ...spendFields,
  idempotency_key: idempotencyKeySchema,
  description: z.string().max(500).optional(),
  metadata: metadataSchema.optional(),
});
export const usageInputSchema = usageShape.superRefine(checkSpendFields);
export type UsageInput = z.infer<typeof usageInputSchema>;

export const batchEventSchema = usageShape.extend({ account_id: accountIdSchema }).superRefine(checkSpendFields);
export type BatchEvent = z.infer<typeof batchEventSchema>;

export const usageBatchInputSchema = z.strictObject({
  events: z.array(batchEventSchema).min(1).max(batchEventCountMax),
});

/** A priced hold names the most the call may use (its max_tokens); it reserves ceil(cost) credits. */
export const holdInputSchema = z
  .strictObject({
    ...spendFields,
    idempotency_key: idempotencyKeySchema,
    expires_in_seconds: z.int().min(1).max(holdLifetimeSecondsMax).default(holdLifetimeSecondsDefault),
  })
  .superRefine(checkSpendFields);
export type HoldInput = z.infer<typeof holdInputSchema>;

/** A spend's quote: what it would charge and whether it would pass now; nothing is written. */
export const quoteInputSchema = z.strictObject(spendFields).superRefine(checkSpendFields);
export type QuoteInput = z.infer<typeof quoteInputSchema>;

/**
 * Left out, the amount is the whole hold (a bare POST captures everything); 0 releases it all. A
 * priced hold is captured by `quantities` (what the call used), priced by the hold's version.
 */
export const captureInputSchema = z
  .strictObject({
    amount: z.int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
    quantities: quantitiesSchema.optional(),
  })
  .refine((input) => input.amount === undefined || input.quantities === undefined, {
    path: ['quantities'],
    message: 'give either amount or quantities, not both',
  });

export const grantInputSchema = z.strictObject({
  amount: amountCreditsSchema,
  source: z.enum(['promo', 'admin']),
  reason: z.string().min(1).max(reasonLengthMax),
  idempotency_key: idempotencyKeySchema,
  expires_at: z.iso.datetime({ offset: true }).optional(),
  priority: z.int().min(0).max(1000).default(0),
});
export type GrantInput = z.infer<typeof grantInputSchema>;

export const adjustmentInputSchema = z.strictObject({
  amount: z
    .int()
    .min(-Number.MAX_SAFE_INTEGER)
    .max(Number.MAX_SAFE_INTEGER)
    .refine((value) => value !== 0, 'must not be zero'),
  reason: z.string().min(1).max(reasonLengthMax),
  idempotency_key: idempotencyKeySchema,
});
export type AdjustmentInput = z.infer<typeof adjustmentInputSchema>;

/**
 * Spend limits: credits per UTC day and per UTC month. A field left out keeps its limit, null
 * removes it, 0 lets nothing be spent in that window.
 */
export const limitCreditsSchema = z.int().min(0).max(Number.MAX_SAFE_INTEGER);
export const spendLimitsInputSchema = z.strictObject({
  per_day: limitCreditsSchema.nullable().optional(),
  per_month: limitCreditsSchema.nullable().optional(),
});
export type SpendLimitsInput = z.infer<typeof spendLimitsInputSchema>;

export const ledgerQuerySchema = z.strictObject({
  limit: z.coerce.number().int().min(1).max(ledgerPageSizeMax).default(ledgerPageSizeDefault),
  cursor: z
    .string()
    .regex(/^[0-9]{1,18}$/, 'a cursor from a previous page')
    .optional(),
});
