// Databases of a benchmark run: each benchmark creates its own databases on the cluster the user
// names with --database-url, and drops them at the end. Header-only, like the data set.
#pragma once

#include <pqxx/pqxx>
#include <stdexcept>
#include <string>

namespace yilian::bench {

// postgresql://[authority]/<database>[?query] with <database> replaced (or added).
inline std::string with_database(const std::string& url, const std::string& database) {
  auto scheme = url.find("://");
  if (scheme == std::string::npos) throw std::invalid_argument("not a postgresql:// URL: " + url);
  auto query = url.find('?', scheme + 3);
  auto slash = url.find('/', scheme + 3);
  std::string out = url;
  if (slash == std::string::npos || (query != std::string::npos && slash > query))
    return out.insert(query == std::string::npos ? url.size() : query, "/" + database);
  auto end = query == std::string::npos ? url.size() : query;
  return out.replace(slash + 1, end - slash - 1, database);
}

// Drops `name` (closing its connections) and, with `create`, creates it empty.
inline void recreate_database(const std::string& admin_url, const std::string& name, bool create = true) {
  pqxx::connection c(admin_url);
  pqxx::nontransaction tx(c);
  tx.exec("DROP DATABASE IF EXISTS " + tx.quote_name(name) + " WITH (FORCE)");
  if (create) tx.exec("CREATE DATABASE " + tx.quote_name(name));
}

}  // namespace yilian::bench
