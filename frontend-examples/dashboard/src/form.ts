// The submit form's inputs, generated from a task type's JSON Schema (`taskTypes {
// inputSchema }`): numbers and integers (min, max, step), strings (length, enums),
// booleans, and arrays of numbers or strings (comma-separated). Defaults come from the
// schema; an optional field left empty is left out, so the api applies its own default.
import { h } from "./dom";

export interface JsonSchema {
  type?: string | string[];
  title?: string;
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  enum?: unknown[];
  anyOf?: JsonSchema[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  format?: string;
}

export interface GeneratedForm {
  fields: HTMLElement[];
  /** The input as GraphQL wants it (camelCase names); throws when a value is invalid. */
  read(): Record<string, unknown>;
}

interface Field {
  element: HTMLElement;
  read(): unknown; // undefined: leave the field out
}

/** The schema's property names are snake_case, the GraphQL input's fields camelCase. */
export function camelCase(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `anyOf: [X, {type: "null"}]` (an optional field) as X, keeping the outer annotations. */
function unwrapNullable(schema: JsonSchema): JsonSchema {
  const options = (schema.anyOf ?? []).filter((s) => s.type !== "null");
  if (options.length !== 1) return schema;
  const { anyOf: _ignored, ...outer } = schema;
  return { ...options[0], ...outer };
}

function typeOf(schema: JsonSchema): string | undefined {
  return Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
}

function bounds(schema: JsonSchema): string {
  const parts: string[] = [];
  const min = schema.minimum ?? schema.exclusiveMinimum;
  const max = schema.maximum ?? schema.exclusiveMaximum;
  if (min !== undefined && max !== undefined) parts.push(`${min} to ${max}`);
  else if (min !== undefined) parts.push(`at least ${min}`);
  else if (max !== undefined) parts.push(`at most ${max}`);
  if (schema.maxLength !== undefined) parts.push(`up to ${schema.maxLength} characters`);
  if (schema.minItems !== undefined || schema.maxItems !== undefined) {
    parts.push(`${schema.minItems ?? 0} to ${schema.maxItems ?? "any number of"} items`);
  }
  return parts.join(", ");
}

function numberInput(name: string, schema: JsonSchema, required: boolean): Field {
  const input = h("input", {
    type: "number",
    name,
    "data-testid": `field-${name}`,
    min: schema.minimum ?? schema.exclusiveMinimum,
    max: schema.maximum ?? schema.exclusiveMaximum,
    step: typeOf(schema) === "integer" ? 1 : "any",
    required,
    value: typeof schema.default === "number" ? schema.default : undefined,
  });
  return {
    element: input,
    read: () => (input.value === "" ? undefined : input.valueAsNumber),
  };
}

function textInput(name: string, schema: JsonSchema, required: boolean): Field {
  if (schema.enum) {
    const select = h(
      "select",
      { name, "data-testid": `field-${name}`, required },
      required ? null : h("option", { value: "" }, "(default)"),
      ...schema.enum.map((v) => h("option", { value: String(v), selected: v === schema.default }, String(v))),
    );
    return { element: select, read: () => (select.value === "" ? undefined : select.value) };
  }
  const input = h("input", {
    type: schema.format === "uri" ? "url" : "text",
    name,
    "data-testid": `field-${name}`,
    minlength: schema.minLength,
    maxlength: schema.maxLength,
    required,
    value: typeof schema.default === "string" ? schema.default : undefined,
  });
  return { element: input, read: () => (input.value === "" && !required ? undefined : input.value) };
}

function checkbox(name: string, schema: JsonSchema): Field {
  const input = h("input", {
    type: "checkbox",
    name,
    "data-testid": `field-${name}`,
    checked: schema.default === true,
  });
  return { element: input, read: () => input.checked };
}

function listInput(name: string, schema: JsonSchema, required: boolean): Field {
  const numeric = ["number", "integer"].includes(typeOf(schema.items ?? {}) ?? "");
  const input = h("input", {
    type: "text",
    name,
    "data-testid": `field-${name}`,
    placeholder: numeric ? "1, 2.5, 3" : "a, b, c",
    required,
    value: Array.isArray(schema.default) ? schema.default.join(", ") : undefined,
  });
  return {
    element: input,
    read: () => {
      const parts = input.value
        .split(numeric ? /[\s,;]+/ : ",")
        .map((p) => p.trim())
        .filter((p) => p !== "");
      if (parts.length === 0 && !required) return undefined;
      if (!numeric) return parts;
      const numbers = parts.map(Number);
      const bad = parts.find((_, i) => !Number.isFinite(numbers[i]));
      if (bad !== undefined) throw new Error(`${name}: "${bad}" is not a number`);
      return numbers;
    },
  };
}

function fieldFor(name: string, raw: JsonSchema, required: boolean): Field {
  const schema = unwrapNullable(raw);
  switch (typeOf(schema)) {
    case "number":
    case "integer":
      return numberInput(name, schema, required);
    case "boolean":
      return checkbox(name, schema);
    case "array":
      return listInput(name, schema, required);
    default:
      return textInput(name, schema, required);
  }
}

export function buildForm(schema: JsonSchema): GeneratedForm {
  const required = new Set(schema.required ?? []);
  const fields: HTMLElement[] = [];
  const readers: [string, () => unknown][] = [];
  for (const [name, property] of Object.entries(schema.properties ?? {})) {
    const field = fieldFor(name, property, required.has(name));
    const range = bounds(unwrapNullable(property));
    const hint = [property.description, range && `(${range})`].filter(Boolean).join(" ");
    fields.push(
      h(
        "label",
        { class: "field" },
        h("span", { class: "field-name" }, property.title ?? name, required.has(name) ? " *" : ""),
        field.element,
        hint ? h("small", {}, hint) : null,
      ),
    );
    readers.push([name, field.read]);
  }
  return {
    fields,
    read() {
      const input: Record<string, unknown> = {};
      for (const [name, read] of readers) {
        const value = read();
        if (value !== undefined) input[camelCase(name)] = value;
      }
      return input;
    },
  };
}
