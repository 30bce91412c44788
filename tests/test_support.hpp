// Helpers shared by the test executables: reading files, JSON trees compared without regard to
// member order, and the known-failure lists of the conformance suites.
#pragma once

#include <doctest/doctest.h>

#include <time.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <string_view>

#include "yilian/fhir/json.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::test {

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Thread CPU time: throughput figures stay meaningful on a shared, busy machine.
struct cpu_clock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<cpu_clock>;
  static constexpr bool is_steady = true;
  static time_point now() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return time_point(duration(static_cast<rep>(ts.tv_sec) * 1000000000 + ts.tv_nsec));
  }
};

// Parses JSON that the test itself supplies; a parse failure fails the test.
inline fhir::value parse_json_or_fail(std::string_view text) {
  fhir::value v;
  fhir::issue_list issues;
  bool ok = fhir::parse_json(text, v, issues);
  REQUIRE_MESSAGE(ok, text);
  return v;
}

// Equality of JSON trees where object member order does not matter (arrays stay ordered).
inline bool same_json(const fhir::value& a, const fhir::value& b) {
  if (a.kind() != b.kind() || a.text() != b.text()) return false;
  if (a.is_object()) {
    if (a.members().size() != b.members().size()) return false;
    for (const auto& m : a.members()) {
      const fhir::value* other = b.find(m.name);
      if (other == nullptr || !same_json(m.val, *other)) return false;
    }
    return true;
  }
  if (a.is_array()) {
    if (a.items().size() != b.items().size()) return false;
    for (std::size_t i = 0; i < a.items().size(); ++i)
      if (!same_json(a.items()[i], b.items()[i])) return false;
  }
  return true;
}

// A known-failures file under tests/data: one entry per line, its name up to the first tab (or
// space), then the reason; '#' starts a comment line.
inline std::map<std::string, std::string> known_failures(std::string_view file_name) {
  std::map<std::string, std::string> out;
  std::ifstream in(std::filesystem::path(YILIAN_SOURCE_DIR) / "tests/data" / file_name);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    auto cut = line.find('\t');
    if (cut == std::string::npos) cut = line.find(' ');
    out[line.substr(0, cut)] = cut == std::string::npos ? "" : line.substr(cut + 1);
  }
  return out;
}

}  // namespace yilian::test
