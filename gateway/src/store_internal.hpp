// Private to the store: numbered migrations, the built-in identifier index, token parsing.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway::detail {

struct migration {
  int version;
  const char* description;
  const char* sql;
};

// Ordered by version, starting at 1, no gaps.
const std::vector<migration>& migrations();

// One alternative of a token search value: `system|code`, `|code` (no system), `code` (any
// system), `system|` (any code).
struct token_alternative {
  bool has_system = false;  // a `|` was present
  std::string system;       // "" with has_system = "no system"
  std::string code;         // "" with has_system = any code
};
// Splits on unescaped commas and the first unescaped `|`; `\,` `\|` `\\` are escapes.
std::vector<token_alternative> parse_token(std::string_view value);
std::vector<std::string> split_or_list(std::string_view value);

// SQL conditions (each starting with " AND ") on the resource row `alias` for search criteria,
// values appended to `params` as bound parameters. Throws store_error(invalid_criteria).
std::string criteria_condition(const request_context& ctx, std::string_view type,
                               const std::vector<criterion>& criteria, std::vector<std::string>& params,
                               const std::string& alias);

// The participant that keeps the search index tables in step with every write (registered by
// every resource_store).
std::shared_ptr<write_participant> make_search_indexer();

}  // namespace yilian::gateway::detail
