// HL7 v2 parser throughput: the MSFT corpus (and the same messages re-encoded in GB 18030) parsed
// over and over on one thread, next to the ceiling of merely finding the segment separators of the
// same bytes with memchr, in the same run.
//
//   bench_hl7v2 [--corpus DIR] [--seconds S]
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "yilian/mappers/hl7v2.hpp"

namespace hl7 = yilian::mappers::hl7v2;
using steady = std::chrono::steady_clock;

namespace {

struct options {
  std::filesystem::path corpus = std::filesystem::path(YILIAN_SHARED_DIR) / "corpus" / "hl7v2-msft";
  double seconds = 3;
};

options parse_arguments(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--corpus" && i + 1 < argc)
      o.corpus = argv[++i];
    else if (a == "--seconds" && i + 1 < argc)
      o.seconds = std::stod(argv[++i]);
    else {
      std::cerr << "usage: bench_hl7v2 [--corpus DIR] [--seconds S]\n";
      std::exit(a == "--help" || a == "-h" ? 0 : 2);
    }
  }
  return o;
}

std::vector<std::string> load(const std::filesystem::path& dir) {
  std::vector<std::string> messages;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".hl7") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    messages.push_back(text.str());
  }
  return messages;
}

// The same messages with MSH-18 = GB18030 and their text in GB 18030 (encode does the conversion).
std::vector<std::string> as_gb18030(const std::vector<std::string>& messages) {
  std::vector<std::string> converted;
  for (const std::string& text : messages) {
    hl7::parse_result r = hl7::parse(text);
    if (!r.parsed) continue;
    hl7::segment& msh = r.parsed->segments.front();
    if (msh.fields.size() < 18) msh.fields.resize(18);
    msh.fields[17] = hl7::field{{hl7::repetition{{hl7::component{{"GB18030"}}}}}};
    converted.push_back(hl7::encode(*r.parsed));
  }
  return converted;
}

struct rate {
  double messages_per_second;
  double megabytes_per_second;
};

// Runs `work` over all messages until `seconds` have passed (whole passes only).
template <class F>
rate measure(const std::vector<std::string>& messages, double seconds, F&& work) {
  std::size_t bytes_per_pass = 0;
  for (const auto& m : messages) bytes_per_pass += m.size();
  std::size_t passes = 0;
  const auto start = steady::now();
  double elapsed = 0;
  do {
    for (const auto& m : messages) work(m);
    ++passes;
    elapsed = std::chrono::duration<double>(steady::now() - start).count();
  } while (elapsed < seconds);
  return {static_cast<double>(passes * messages.size()) / elapsed,
          static_cast<double>(passes * bytes_per_pass) / elapsed / 1e6};
}

std::size_t count_separators(const std::string& m) {
  std::size_t n = 0;
  for (char separator : {'\r', '\n'}) {
    const char* p = m.data();
    const char* end = p + m.size();
    while ((p = static_cast<const char*>(std::memchr(p, separator, static_cast<std::size_t>(end - p)))) != nullptr) {
      ++n;
      ++p;
    }
  }
  return n;
}

void row(std::string_view name, rate r, rate ceiling) {
  std::printf("| %-44s | %12.0f | %8.1f | %5.1f%% |\n", std::string(name).c_str(), r.messages_per_second,
              r.megabytes_per_second, 100.0 * r.megabytes_per_second / ceiling.megabytes_per_second);
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse_arguments(argc, argv);
  const std::vector<std::string> utf8 = load(o.corpus);
  if (utf8.empty()) {
    std::cerr << "no .hl7 files in " << o.corpus << "\n";
    return 1;
  }
  const std::vector<std::string> gb = as_gb18030(utf8);
  std::size_t bytes = 0;
  for (const auto& m : utf8) bytes += m.size();
  std::printf("%zu messages, %zu bytes (mean %zu), %.1f s per row, one thread\n\n", utf8.size(), bytes,
              bytes / utf8.size(), o.seconds);

  volatile std::size_t sink = 0;
  const rate ceiling = measure(utf8, o.seconds, [&](const std::string& m) { sink = sink + count_separators(m); });
  const rate parse = measure(utf8, o.seconds, [&](const std::string& m) { sink = sink + hl7::parse(m).problems.size(); });
  const rate parse_gb = measure(gb, o.seconds, [&](const std::string& m) { sink = sink + hl7::parse(m).problems.size(); });
  const rate round_trip = measure(utf8, o.seconds, [&](const std::string& m) {
    sink = sink + hl7::encode(*hl7::parse(m).parsed).size();
  });

  std::printf("| %-44s | %12s | %8s | %6s |\n", "", "messages/s", "MB/s", "of ceiling");
  std::printf("|---|---:|---:|---:|\n");
  row("memchr for segment separators (ceiling)", ceiling, ceiling);
  row("parse (UTF-8 corpus)", parse, ceiling);
  row("parse (same messages in GB 18030, iconv)", parse_gb, ceiling);
  row("parse + encode (UTF-8 corpus)", round_trip, ceiling);
  return sink == 0 ? 1 : 0;
}
