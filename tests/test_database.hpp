// Test helper: a fresh, uniquely named database on the shared throwaway PostgreSQL cluster that
// the `postgres` ctest fixture starts (`yilian postgres start --url-file F`; ctest passes the file
// name in YILIAN_TEST_DATABASE_URL_FILE). Each test gets its own database, so tests may run in
// parallel and never see each other's rows.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <pqxx/pqxx>
#include <stdexcept>
#include <string>
#include <string_view>

namespace yilian::test {

// Empty when YILIAN_TEST_DATABASE_URL_FILE is unset (the test was not started by ctest): the
// caller skips with a message. Throws when the file or the cluster is unusable.
inline std::string fresh_database_url(std::string_view name_hint) {
  const char* file = std::getenv("YILIAN_TEST_DATABASE_URL_FILE");
  if (!file || !*file) return {};
  std::ifstream in(file);
  std::string base;
  std::getline(in, base);
  while (!base.empty() && std::isspace(static_cast<unsigned char>(base.back()))) base.pop_back();
  if (base.empty())
    throw std::runtime_error(std::string("no database URL in ") + file +
                             " (is the shared test cluster running? ctest starts it with `yilian postgres start`)");

  static std::atomic<unsigned> counter{0};
  std::string name = "t_";
  for (char c : name_hint) {
    if (name.size() >= 30) break;
    name += std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(static_cast<unsigned char>(c)))
                                                        : '_';
  }
  auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
  name += "_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + "_" +
          std::to_string(static_cast<unsigned long long>(ticks) % 100000);

  // postgresql://[authority]/<database>[?query]: replace <database>.
  auto scheme = base.find("://");
  if (scheme == std::string::npos) throw std::runtime_error("not a postgresql:// URL: " + base);
  auto slash = base.find('/', scheme + 3);
  auto query = base.find('?', scheme + 3);
  if (slash == std::string::npos || (query != std::string::npos && slash > query)) {
    std::string::size_type at = query == std::string::npos ? base.size() : query;
    base.insert(at, "/");
    slash = at;
    query = query == std::string::npos ? std::string::npos : query + 1;
  }
  std::string admin = base;
  std::string url = base;
  auto db_end = query == std::string::npos ? base.size() : query;
  admin.replace(slash + 1, db_end - slash - 1, "postgres");
  url.replace(slash + 1, db_end - slash - 1, name);

  pqxx::connection c(admin);
  pqxx::nontransaction tx(c);
  // Once per process: drop databases left by test processes that have exited, so the shared
  // cluster does not grow run after run (names end in _<pid>_<counter>_<ticks>).
  static std::once_flag cleaned;
  std::call_once(cleaned, [&] {
    for (const auto& row : tx.exec("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")) {
      std::string db = row[0].c_str();
      auto last = db.rfind('_');
      auto mid = last == std::string::npos || last == 0 ? std::string::npos : db.rfind('_', last - 1);
      auto first = mid == std::string::npos || mid == 0 ? std::string::npos : db.rfind('_', mid - 1);
      if (first == std::string::npos) continue;
      long pid = std::strtol(db.c_str() + first + 1, nullptr, 10);
      if (pid <= 0 || pid == getpid()) continue;
      if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // still running
      try {
        tx.exec("DROP DATABASE IF EXISTS " + c.quote_name(db) + " WITH (FORCE)");
      } catch (const pqxx::sql_error&) {
        // Another test process dropped it first, or it is in use: leave it.
      }
    }
  });
  tx.exec("CREATE DATABASE " + c.quote_name(name));
  return url;
}

}  // namespace yilian::test
