// Where the api is and which key to send: the API URL defaults to this page's origin (the
// api serves the page at /dashboard/); both are kept in localStorage. `?key=trk_...` in
// the page's URL sets the key (then leaves the address bar, so it stays out of history).
const KEY = "taskrunner.apiKey";
const URL_KEY = "taskrunner.apiUrl";

export interface Connection {
  apiUrl: string;
  key: string;
}

export function loadConnection(): Connection {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("key");
  if (fromUrl) {
    localStorage.setItem(KEY, fromUrl);
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
  }
  return {
    apiUrl: localStorage.getItem(URL_KEY) || location.origin,
    key: localStorage.getItem(KEY) ?? "",
  };
}

export function saveConnection({ apiUrl, key }: Connection): Connection {
  const url = apiUrl.trim().replace(/\/+$/, "") || location.origin;
  if (url === location.origin) localStorage.removeItem(URL_KEY);
  else localStorage.setItem(URL_KEY, url);
  localStorage.setItem(KEY, key.trim());
  return { apiUrl: url, key: key.trim() };
}

export function forgetKey(): void {
  localStorage.removeItem(KEY);
}

/**
 * The development key the api hands out under `taskrunner dev` on a loopback address
 * (GET /dashboard/config.json: {"devKey": "trk_..."}; {} elsewhere, 404 from an older
 * api). Null when there is none.
 */
export async function fetchDevKey(): Promise<string | null> {
  try {
    const response = await fetch(`${import.meta.env.BASE_URL}config.json`, { cache: "no-store" });
    if (!response.ok) return null;
    const config = (await response.json()) as { devKey?: unknown };
    return typeof config.devKey === "string" && config.devKey ? config.devKey : null;
  } catch {
    return null;
  }
}
