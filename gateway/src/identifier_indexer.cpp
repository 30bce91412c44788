// Built-in index of the top-level `identifier[]` tokens (system|value), used by conditional
// create/update/delete and the basic identifier search.
#include <pqxx/pqxx>

#include "store_internal.hpp"

namespace yilian::gateway::detail {

std::vector<std::string> split_or_list(std::string_view value) {
  std::vector<std::string> out;
  std::string cur;
  for (std::size_t i = 0; i < value.size(); ++i) {
    char c = value[i];
    if (c == '\\' && i + 1 < value.size()) {
      // Keep the escape: token parsing below needs to tell `\|` from `|`.
      cur += c;
      cur += value[++i];
    } else if (c == ',') {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(std::move(cur));
  return out;
}

namespace {
// Writes index_token rows (param = "identifier") for every identifier[] of the resource,
// replacing the resource's previous rows.
class identifier_indexer : public write_participant {
 public:
  void in_transaction(pqxx::transaction_base& tx, const write_event& event) override;
};

std::string unescape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out += s[i];
  }
  return out;
}
}  // namespace

std::vector<token_alternative> parse_token(std::string_view value) {
  std::vector<token_alternative> out;
  for (const auto& part : split_or_list(value)) {
    token_alternative t;
    std::size_t bar = std::string::npos;
    for (std::size_t i = 0; i < part.size(); ++i) {
      if (part[i] == '\\') {
        ++i;
      } else if (part[i] == '|') {
        bar = i;
        break;
      }
    }
    if (bar == std::string::npos) {
      t.code = unescape(part);
    } else {
      t.has_system = true;
      t.system = unescape(std::string_view(part).substr(0, bar));
      t.code = unescape(std::string_view(part).substr(bar + 1));
    }
    out.push_back(std::move(t));
  }
  return out;
}

void identifier_indexer::in_transaction(pqxx::transaction_base& tx, const write_event& event) {
  const std::string& tenant = event.context->tenant;
  const stored_resource& r = *event.resource;
  if (r.version > 1) tx.exec_prepared("index_token_delete", tenant, r.type, r.id, "identifier");
  if (!event.content || r.deleted) return;
  const fhir::value* ids = event.content->find("identifier");
  if (!ids || !ids->is_array()) return;

  // One multi-row INSERT for all identifiers of the resource.
  std::vector<std::string> params;
  std::string sql = "INSERT INTO index_token (tenant, res_type, res_id, param, system, code) VALUES ";
  params.push_back(tenant);
  params.push_back(r.type);
  params.push_back(r.id);
  std::size_t rows = 0;
  for (const auto& item : ids->items()) {
    const fhir::value* v = item.find("value");
    if (!v || !v->is_string() || v->text().empty()) continue;
    const fhir::value* s = item.find("system");
    params.push_back(s && s->is_string() ? s->text() : std::string());
    params.push_back(v->text());
    std::size_t n = params.size();
    sql += (rows++ ? ", " : "");
    sql += "($1, $2, $3, 'identifier', $" + std::to_string(n - 1) + ", $" + std::to_string(n) + ")";
  }
  if (rows == 0) return;
  tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params));
}

std::shared_ptr<write_participant> make_search_indexer() {
  return std::make_shared<identifier_indexer>();
}

}  // namespace yilian::gateway::detail
