#include "yilian/mappers/hl7v2.hpp"

#include <doctest/doctest.h>
#include <iconv.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

namespace hl7 = yilian::mappers::hl7v2;

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::filesystem::path corpus_dir() {
  return std::filesystem::path(YILIAN_SHARED_DIR) / "corpus" / "hl7v2-msft";
}

// tests/data/hl7v2-known-malformed.txt: "<file name> <reason>" per line, '#' comments.
std::map<std::string, std::string> known_malformed() {
  std::map<std::string, std::string> known;
  std::ifstream in(std::filesystem::path(YILIAN_SOURCE_DIR) / "tests" / "data" / "hl7v2-known-malformed.txt");
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.find(' ');
    known[line.substr(0, space)] = space == std::string::npos ? "" : line.substr(space + 1);
  }
  return known;
}

std::string describe(const std::vector<hl7::problem>& problems) {
  std::string text;
  for (const auto& p : problems)
    text += (p.is_warning ? "warning " : "error ") + p.where.text() + ": " + p.message + "\n";
  return text;
}

std::vector<hl7::problem> errors_of(const hl7::parse_result& r) {
  std::vector<hl7::problem> errors;
  for (const auto& p : r.problems)
    if (!p.is_warning) errors.push_back(p);
  return errors;
}

std::string convert(std::string_view text, const char* to, const char* from) {
  iconv_t cd = iconv_open(to, from);
  REQUIRE(cd != reinterpret_cast<iconv_t>(-1));
  std::string in(text), out(text.size() * 4 + 16, '\0');
  char* source = in.data();
  char* target = out.data();
  std::size_t source_left = in.size(), target_left = out.size();
  REQUIRE(iconv(cd, &source, &source_left, &target, &target_left) != static_cast<std::size_t>(-1));
  iconv_close(cd);
  out.resize(out.size() - target_left);
  return out;
}

hl7::parse_result parse_ok(std::string_view text) {
  hl7::parse_result r = hl7::parse(text);
  INFO(describe(r.problems));
  REQUIRE(r.ok());
  return r;
}

void check_round_trip(const hl7::message& m) {
  const hl7::parse_result again = hl7::parse(hl7::encode(m));
  INFO(describe(again.problems));
  REQUIRE(again.parsed);
  CHECK(again.parsed->segments == m.segments);
  CHECK(again.parsed->separators.field == m.separators.field);
  CHECK(again.parsed->separators.component == m.separators.component);
  CHECK(again.parsed->separators.escape == m.separators.escape);
}

const std::string header = "MSH|^~\\&|LIS|LAB|HIS|HOSP|20260303102000||ORU^R01^ORU_R01|C1|P|2.5\r";

}  // namespace

TEST_CASE("every message of the MSFT corpus parses without errors and survives encode") {
  const auto known = known_malformed();
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(corpus_dir())) {
    if (entry.path().extension() != ".hl7") continue;
    ++files;
    const std::string name = entry.path().filename().string();
    CAPTURE(name);
    const hl7::parse_result r = hl7::parse(read_file(entry.path()));
    REQUIRE(r.parsed);
    if (known.contains(name)) {
      CHECK_MESSAGE(!errors_of(r).empty(), "listed as malformed but parses cleanly: " << name);
      continue;
    }
    INFO(describe(r.problems));
    CHECK(errors_of(r).empty());
    CHECK(r.parsed->segments.size() >= 2);
    CHECK(!r.parsed->message_type().empty());
    check_round_trip(*r.parsed);
  }
  CHECK(files >= 139);
}

TEST_CASE("MSH shortcuts and value paths on a corpus message") {
  const auto r = parse_ok(read_file(corpus_dir() / "ADT-A01-01.hl7"));
  const hl7::message& m = *r.parsed;
  CHECK(m.message_type() == "ADT");
  CHECK(m.trigger_event() == "A01");
  CHECK(m.control_id() == "MSG00001");
  CHECK(m.version() == "2.8");
  CHECK(m.sending_facility() == "GHHSFacility");
  CHECK(m.value("MSH-1") == "|");
  CHECK(m.value("MSH-2") == "^~\\&");
  CHECK(m.value("MSH-4.2") == "2.16.840.1.122848.1.30");
  CHECK(m.find("PID") != nullptr);
  CHECK(m.find("PID", 2) == nullptr);
  CHECK(m.value("NOPE-1").empty());
}

TEST_CASE("custom delimiters come from MSH-1 and MSH-2") {
  const auto r = parse_ok("MSH*%$!@*APP*FAC*R*RF*20260101**ADT%A01*X9*P*2.4\r"
                          "PID*1**a%b$c@d**x!F!y!S!z");
  const hl7::message& m = *r.parsed;
  CHECK(m.separators.field == '*');
  CHECK(m.separators.component == '%');
  CHECK(m.separators.repetition == '$');
  CHECK(m.separators.escape == '!');
  CHECK(m.separators.subcomponent == '@');
  CHECK(m.value("MSH-2") == "%$!@");
  CHECK(m.trigger_event() == "A01");
  CHECK(m.value("PID-3.2") == "b");
  CHECK(m.value("PID-3(2).1.1") == "c");
  CHECK(m.value("PID-3(2).1.2") == "d");
  CHECK(m.value("PID-5") == "x*y%z");
  check_round_trip(m);
}

TEST_CASE("a field separator that is a letter of MSH still yields the header (found by the fuzzer)") {
  const auto r = hl7::parse("MSHM^~\\&MAMBMCMDM20260101MMADT^A01M1MPM2.5\rPIDM1");
  REQUIRE(r.parsed);
  REQUIRE(r.parsed->segments.size() == 2);
  CHECK(r.parsed->segments[0].id == "MSH");
  CHECK(r.parsed->message_type() == "ADT");
  CHECK(r.parsed->value("PID-1") == "1");
  check_round_trip(*r.parsed);
}

TEST_CASE("escape sequences are resolved in every leaf") {
  const auto r = parse_ok(header + "OBX|1|TX|||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g\\X41\\h\\H\\i\\N\\"
                                   "|\\XE5BCA0E4B889\\|\\Q\\ kept|tail\\F");
  const hl7::message& m = *r.parsed;
  CHECK(m.value("OBX-5") == "a|b^c&d~e\\f\ngAhi");
  CHECK(m.value("OBX-6") == "张三");
  CHECK(m.value("OBX-7") == "\\Q\\ kept");
  CHECK(m.value("OBX-8") == "tail\\F");
  check_round_trip(m);
}

TEST_CASE("the HL7 null \"\" differs from an empty field") {
  const auto r = parse_ok(header + "PID|1||\"\"||Li^\"\"^Ming");
  const hl7::message& m = *r.parsed;
  const hl7::segment& pid = *m.find("PID");
  CHECK(pid.field_at(2)->repetitions.empty());
  CHECK(!m.is_null("PID-2"));
  REQUIRE(pid.field_at(3)->repetitions.size() == 1);
  CHECK(m.is_null("PID-3"));
  CHECK(m.value("PID-3").empty());
  CHECK(!m.is_null("PID-5"));
  CHECK(m.value("PID-5.2") == "\"\"");
  check_round_trip(m);
  CHECK(hl7::encode(m).find("PID|1||\"\"||Li^\"\"^Ming\r") != std::string::npos);
}

TEST_CASE("repetitions, components and sub-components by path") {
  const auto r = parse_ok(header + "PID|1||MRN1^^^H1&1.2.3&ISO~MRN2^^^H2&2.3.4&ISO||Wang\r"
                                   "OBX|1|NM|K^Potassium||4.1\rOBX|2|NM|NA^Sodium||140");
  const hl7::message& m = *r.parsed;
  CHECK(m.value("PID-3") == "MRN1");
  CHECK(m.value("PID-3(2)") == "MRN2");
  CHECK(m.value("PID-3(2).4") == "H2");
  CHECK(m.value("PID-3(2).4.2") == "2.3.4");
  CHECK(m.value("PID-3(3)").empty());
  CHECK(m.value("OBX[2]-5") == "140");
  CHECK(m.value("OBX[2]-3.2") == "Sodium");
  CHECK(m.all("OBX").size() == 2);
  CHECK(m.find("OBX", 2)->value(3, 1, 2) == "Sodium");
}

TEST_CASE("Z-segments are kept") {
  const auto r = parse_ok(header + "PID|1\rZPI|1|local^value\rZX1|");
  CHECK(r.parsed->value("ZPI-2.2") == "value");
  CHECK(r.parsed->find("ZX1") != nullptr);
  CHECK(r.parsed->segments.back().id == "ZX1");
}

TEST_CASE("segments end with CR, LF or CRLF; MLLP framing and a BOM are tolerated") {
  const std::string body = "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5{}PID|1||X{}PV1|1|I{}";
  for (const std::string separator : {"\r", "\n", "\r\n", "\n\r\n"}) {
    std::string text = body;
    for (std::size_t at; (at = text.find("{}")) != std::string::npos;) text.replace(at, 2, separator);
    CAPTURE(separator);
    for (const std::string& framed : {text, "\x0b" + text + "\x1c\r", "\xEF\xBB\xBF" + text + "  \n"}) {
      const auto r = parse_ok(framed);
      REQUIRE(r.parsed->segments.size() == 3);
      CHECK(r.parsed->value("PV1-2") == "I");
      CHECK(r.parsed->value("PID-3") == "X");
    }
  }
}

TEST_CASE("GB 18030 names in PID-5 come out as UTF-8") {
  for (const std::string charset : {"GB18030", "GB 18030-2000", "GBK", "GB2312"}) {
    CAPTURE(charset);
    const std::string utf8 = "MSH|^~\\&|HIS|医院|EMPI|联盟|20260303||ADT^A01|1|P|2.4||||||" + charset +
                             "\rPID|1||110101199003077777^^^身份证||张三^^^^^^L||19900307|M";
    const std::string gb = convert(utf8, "GB18030", "UTF-8");
    REQUIRE(gb != utf8);
    const auto r = parse_ok(gb);
    CHECK(r.parsed->value("PID-5.1") == "张三");
    CHECK(r.parsed->value("PID-3.4") == "身份证");
    CHECK(r.parsed->sending_facility() == "医院");
    CHECK(r.parsed->charset == charset);
    CHECK(hl7::encode(*r.parsed) == convert(utf8 + "\r", "GB18030", "UTF-8"));
    check_round_trip(*r.parsed);
  }
}

TEST_CASE("GBK trail bytes that equal delimiters do not split fields") {
  // 0x81 0x5C and 0x81 0x7C are Chinese characters whose second byte is '\' and '|'.
  const std::string backslash_char = convert("\x81\x5C", "UTF-8", "GB18030");
  const std::string bar_char = convert("\x81\x7C", "UTF-8", "GB18030");
  const auto r = parse_ok("MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||GBK\rPID|1||X||\x81\x5C\x81\x7C^Z");
  CHECK(r.parsed->value("PID-5.1") == backslash_char + bar_char);
  CHECK(r.parsed->value("PID-5.2") == "Z");
}

TEST_CASE("default_charset applies when MSH-18 is empty") {
  const std::string gb = convert(header + "PID|1||X||李四", "GB18030", "UTF-8");
  hl7::parse_options options;
  options.default_charset = "GB18030";
  const auto with_default = hl7::parse(gb, options);
  CHECK(with_default.ok());
  CHECK(with_default.parsed->value("PID-5") == "李四");
  const auto without = hl7::parse(gb);
  REQUIRE(!without.ok());
  CHECK(without.problems.front().where.text() == "PID-5.1");
}

TEST_CASE("charset names of table 0211 and common aliases") {
  CHECK(hl7::iconv_charset("") == "UTF-8");
  CHECK(hl7::iconv_charset("UNICODE UTF-8") == "UTF-8");
  CHECK(hl7::iconv_charset("ASCII") == "UTF-8");
  CHECK(hl7::iconv_charset("GB 18030-2000") == "GB18030");
  CHECK(hl7::iconv_charset("gbk") == "GB18030");
  CHECK(hl7::iconv_charset("CNS 11643-1992") == "EUC-TW");
  CHECK(hl7::iconv_charset("BIG-5") == "BIG5");
  CHECK(hl7::iconv_charset("8859/1") == "ISO-8859-1");
  CHECK(hl7::iconv_charset("8859/15") == "ISO-8859-15");
  CHECK(hl7::iconv_charset("EBCDIC-ish") == std::nullopt);
  const auto r = hl7::parse("MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||8859/1\rPID|1||X||M\xFCller");
  CHECK(r.ok());
  CHECK(r.parsed->value("PID-5") == "Müller");
  const auto unknown = hl7::parse("MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||KLINGON\rPID|1");
  REQUIRE(unknown.parsed);
  REQUIRE(!unknown.problems.empty());
  CHECK(unknown.problems.front().where.text() == "MSH-18");
  CHECK(unknown.problems.front().code == hl7::error_code::table_value_not_found);
}

TEST_CASE("ill-formed bytes are problems with a location, replaced by U+FFFD") {
  const auto r = hl7::parse(header + "PID|1\rPID|2||X~Y^a&b\xFF||Wang^Li\xC3");
  REQUIRE(r.parsed);
  CHECK(!r.ok());
  REQUIRE(r.problems.size() == 2);
  CHECK(r.problems[0].where.text() == "PID[2]-3(2).2.2");
  CHECK(r.problems[0].code == hl7::error_code::data_type);
  CHECK(r.problems[1].where.text() == "PID[2]-5.2");
  CHECK(r.parsed->value("PID[2]-3(2).2.2") == "b\xEF\xBF\xBD");
  CHECK(r.parsed->value("PID[2]-5.2") == "Li\xEF\xBF\xBD");

  const auto gb = hl7::parse("MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||GB18030\rPID|1||X||\x81 |Z");
  REQUIRE(gb.parsed);
  REQUIRE(errors_of(gb).size() == 1);
  CHECK(errors_of(gb).front().where.text() == "PID-5.1");
  CHECK(gb.parsed->value("PID-6") == "Z");

  const auto escaped = hl7::parse(header + "NTE|1||bad \\XC3\\ byte");
  REQUIRE(errors_of(escaped).size() == 1);
  CHECK(errors_of(escaped).front().where.text() == "NTE-3.1");
}

TEST_CASE("structural problems: no MSH, bad segment ids, required MSH fields, versions, limits") {
  for (std::string_view text : {"", "PID|1", "MS", "\x0b\x1c\r", "MSH\r", "MSH|^^\\&|x"}) {
    const auto r = hl7::parse(text);
    CAPTURE(text);
    CHECK(!r.parsed);
    CHECK(!r.problems.empty());
  }
  const auto bad_id = hl7::parse(header + "PID|1\rpv1|1\rOBXX|1\rOBX|1");
  REQUIRE(bad_id.parsed);
  CHECK(bad_id.parsed->segments.size() == 3);
  REQUIRE(errors_of(bad_id).size() == 2);
  CHECK(errors_of(bad_id)[0].where.segment == "pv1");
  CHECK(errors_of(bad_id)[1].where.segment == "OBXX");

  const auto missing = hl7::parse("MSH|^~\\&|A|B|C|D|20260101\rPID|1");
  REQUIRE(missing.parsed);
  std::vector<std::string> where;
  for (const auto& p : missing.problems) {
    CHECK(p.code == hl7::error_code::required_field_missing);
    where.push_back(p.where.text());
  }
  CHECK(where == std::vector<std::string>{"MSH-9", "MSH-10", "MSH-12"});

  const auto old = hl7::parse("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.2\rPID|1");
  CHECK(old.ok());
  REQUIRE(old.problems.size() == 1);
  CHECK(old.problems[0].is_warning);
  CHECK(old.problems[0].code == hl7::error_code::unsupported_version);

  hl7::parse_options small;
  small.max_bytes = 64;
  const auto too_big = hl7::parse(header + "PID|1", small);
  CHECK(!too_big.parsed);
  CHECK(too_big.problems.at(0).code == hl7::error_code::value_too_long);
  hl7::parse_options few;
  few.max_values = 20;
  const auto too_many = hl7::parse(header + "OBX|" + std::string(100, '^'), few);
  REQUIRE(too_many.parsed);
  CHECK(!too_many.ok());
}

TEST_CASE("location notation both ways") {
  for (std::string_view text : {"PID", "OBX[3]", "PID-7", "OBX[3]-5", "PID-3(2).4", "PID-3(2).4.1", "ZPI-2.1.3"}) {
    const auto where = hl7::location::parse(text);
    REQUIRE(where);
    CHECK(where->text() == text);
  }
  for (std::string_view text : {"", "PI", "PID-", "PID-0", "PID[0]-1", "PID-3(", "PID-3.x", "pid-1", "PID-1.2.3.4"})
    CHECK(!hl7::location::parse(text));
  CHECK(hl7::location{"PID", 1, 5, 0, 0, 2}.text() == "PID-5.1.2");
}

TEST_CASE("truncated and mutated input yields problems, never a crash or a hang") {
  const std::string original = read_file(corpus_dir() / "ORU-R01-01.hl7");
  REQUIRE(original.size() > 100);
  auto check_input = [](std::string_view text) {
    const auto r = hl7::parse(text);
    if (!r.parsed) {
      CHECK(!r.problems.empty());
      return;
    }
    const auto again = hl7::parse(hl7::encode(*r.parsed));
    CHECK(again.parsed);
  };
  for (std::size_t length = 0; length <= original.size(); ++length) check_input(std::string_view(original).substr(0, length));

  std::mt19937 random(20261124);
  const std::string interesting = "|^~\\&\r\n\"X0123456789ABCDEF.br\x0b\x1c\xFF\xC3\x81";
  for (int round = 0; round < 3000; ++round) {
    std::string text = original;
    const int edits = 1 + static_cast<int>(random() % 8);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const std::size_t at = random() % text.size();
      const char c = random() % 2 ? interesting[random() % interesting.size()] : static_cast<char>(random() % 256);
      switch (random() % 3) {
        case 0: text[at] = c; break;
        case 1: text.insert(at, 1, c); break;
        default: text.erase(at, 1 + random() % 16); break;
      }
    }
    check_input(text);
  }
}

TEST_CASE("the element budget also bounds empty fields, repetitions and segments") {
  hl7::parse_options few;
  few.max_values = 1000;
  for (const std::string& tail : {"PID" + std::string(5000, '|'), "PID|" + std::string(5000, '~'), [] {
         std::string many;
         for (int i = 0; i < 2000; ++i) many += "ZZZ\r";
         return many;
       }()}) {
    const auto r = hl7::parse(header + tail, few);
    REQUIRE(r.parsed);
    REQUIRE(!r.ok());
    CHECK(r.problems.back().code == hl7::error_code::value_too_long);
    CHECK(r.problems.back().message.starts_with("more than 1000 values"));
  }
}
