// The page's strings in the operator's language: t("English msgid", {name: value}) and
// data-i18n="msgid" on elements (data-i18n-placeholder / data-i18n-title for attributes).
// The catalogue comes from /api/v1/i18n/<lang>; a msgid without translation shows as itself.
"use strict";

const I18N = { language: "en", messages: {} };

function t(msgid, params) {
  const text = I18N.messages[msgid] || msgid;
  if (!params) return text;
  return text.replace(/\{([a-z_0-9]+)\}/g, (m, key) => (key in params ? String(params[key]) : m));
}

// An alert's message in the reader's language: its message_id filled with its params (a *_text value is a msgid
// itself); an alert stored before message ids existed has only its English message.
function alertText(a) {
  if (!a.message_id) return a.message;
  const params = {};
  for (const [k, v] of Object.entries(a.params || {})) params[k] = k.endsWith("_text") ? t(v) : v;
  return t(a.message_id, params);
}

// An eligibility reason in the reader's language, from its message tree (collector/eligibility/messages.py):
// a string is shown as it is, {id, params} is a msgid filled with its rendered params, {join, parts} joins them.
function messageText(node) {
  if (node === null || node === undefined) return "";
  if (typeof node === "string") return node;
  if ("join" in node) return (node.parts || []).map(messageText).join(t(node.join));
  const params = {};
  for (const [k, v] of Object.entries(node.params || {})) params[k] = messageText(v);
  return t(node.id, params);
}

// The stored English text in English (byte for byte what was signed and exported), else the tree translated.
function reasonText(tree, english) {
  if (!tree || String(I18N.language).startsWith("en")) return english;
  return messageText(tree);
}

function applyI18n(root) {
  const scope = root || document;
  scope.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  scope.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  scope.querySelectorAll("[data-i18n-title]").forEach((el) => { el.title = t(el.dataset.i18nTitle); });
  document.documentElement.lang = I18N.language;
}

function useCatalogue(cat) {
  I18N.language = cat.language;
  I18N.messages = cat.messages || {};
  applyI18n(document);
}

async function loadLanguage(language, fetchJson) {
  useCatalogue(await fetchJson(`/api/v1/i18n/${encodeURIComponent(language)}`));
}

// Before login: the site's language, or what the login screen's switch picked in this browser (remembered here).
const LOGIN_LANGUAGE_KEY = "collector.login-language";

async function loadLoginLanguage(fetchJson) {
  let picked = null;
  try { picked = window.localStorage.getItem(LOGIN_LANGUAGE_KEY); } catch (e) { /* storage off: the site's */ }
  const query = picked ? `?language=${encodeURIComponent(picked)}` : "";
  useCatalogue(await fetchJson(`/api/v1/login/language${query}`));
}

function rememberLoginLanguage(language) {
  try { window.localStorage.setItem(LOGIN_LANGUAGE_KEY, language); } catch (e) { /* storage off: this visit only */ }
}
