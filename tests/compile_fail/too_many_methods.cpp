// A TROUPE_ACTOR listing more methods than it supports (64).
// expect-error: too_many_methods_in_one_TROUPE_ACTOR_the_limit_is_64
#include <troupe/troupe.hpp>

class A {
 public:
  int m0() { return 0; }
  int m1() { return 1; }
  int m2() { return 2; }
  int m3() { return 3; }
  int m4() { return 4; }
  int m5() { return 5; }
  int m6() { return 6; }
  int m7() { return 7; }
  int m8() { return 8; }
  int m9() { return 9; }
  int m10() { return 10; }
  int m11() { return 11; }
  int m12() { return 12; }
  int m13() { return 13; }
  int m14() { return 14; }
  int m15() { return 15; }
  int m16() { return 16; }
  int m17() { return 17; }
  int m18() { return 18; }
  int m19() { return 19; }
  int m20() { return 20; }
  int m21() { return 21; }
  int m22() { return 22; }
  int m23() { return 23; }
  int m24() { return 24; }
  int m25() { return 25; }
  int m26() { return 26; }
  int m27() { return 27; }
  int m28() { return 28; }
  int m29() { return 29; }
  int m30() { return 30; }
  int m31() { return 31; }
  int m32() { return 32; }
  int m33() { return 33; }
  int m34() { return 34; }
  int m35() { return 35; }
  int m36() { return 36; }
  int m37() { return 37; }
  int m38() { return 38; }
  int m39() { return 39; }
  int m40() { return 40; }
  int m41() { return 41; }
  int m42() { return 42; }
  int m43() { return 43; }
  int m44() { return 44; }
  int m45() { return 45; }
  int m46() { return 46; }
  int m47() { return 47; }
  int m48() { return 48; }
  int m49() { return 49; }
  int m50() { return 50; }
  int m51() { return 51; }
  int m52() { return 52; }
  int m53() { return 53; }
  int m54() { return 54; }
  int m55() { return 55; }
  int m56() { return 56; }
  int m57() { return 57; }
  int m58() { return 58; }
  int m59() { return 59; }
  int m60() { return 60; }
  int m61() { return 61; }
  int m62() { return 62; }
  int m63() { return 63; }
  int m64() { return 64; }
};
TROUPE_ACTOR(A, (), m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34, m35, m36, m37, m38, m39, m40, m41, m42, m43, m44, m45, m46, m47, m48, m49, m50, m51, m52, m53, m54, m55, m56, m57, m58, m59, m60, m61, m62, m63, m64);
